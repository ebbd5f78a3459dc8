// The review grid: every tile of a page in one component, fixed with the keyboard or the mouse.
//
// Changes stay here until "Update" (u, Ctrl+Enter) sends them all in one trigger, so a pick costs
// no round trip to the server. They are kept per scrape in sessionStorage, so a page change, a
// filter or leaving the page loses none of them; a reload or a link out asks first.
//
// Everything from an advertiser (titles, URLs, feed colors) is set as text (textContent), never
// as HTML. Pictures come only from the app's own /api/thumb and /api/original routes.

const STATE = new WeakMap(); // parentElement -> the grid's state between renders
const TYPE_KEYS = { 1: 0, 2: 1, 3: 2 };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "cls") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function pendingKey(scrape) {
  return `tagdesk.pending.${scrape}`;
}

function loadPending(scrape) {
  try {
    const saved = JSON.parse(sessionStorage.getItem(pendingKey(scrape)) || "[]");
    return new Map(saved.map((c) => [`${c.id}:${c.field}`, c]));
  } catch {
    return new Map();
  }
}

function percent(p) {
  return p === null || p === undefined ? "" : ` ${Math.round(p * 100)}%`;
}

class Grid {
  constructor(root, args) {
    this.root = root;
    this.args = args;
    this.scrape = null;
    this.pending = new Map(); // "id:field" -> {id, field, value, seen}
    this.selected = new Set();
    this.anchor = null; // the last tile clicked, for shift-click ranges
    this.focusId = null;
    this.saving = null; // the nonce of the update or undo in flight
    this.sent = new Map(); // the changes that update sent, by "id:field"
    this.dense = localStorage.getItem("tagdesk.dense") === "1";
    this.viewer = null; // {id, zoom, x, y}
    this.lastAck = null;
    this.failures = new Map(); // picture URL -> how many times it failed to load
    this.gaveUp = new Set(); // pictures the server had none for: not asked again (failed())
    this.build();
  }

  // --- structure (built once; render() fills it) ---------------------------------------------

  build() {
    this.toolbar = el("div", { cls: "toolbar" });
    this.grid = el("div", { cls: "grid", role: "grid", "aria-label": "Images of this page" });
    this.bar = el("div", { cls: "bar", role: "region", "aria-label": "Unsaved changes" });
    this.overlay = el("div", { cls: "viewer", hidden: true, role: "dialog", "aria-modal": "true" });
    this.help = el("div", { cls: "help", hidden: true });
    for (const stale of this.root.querySelectorAll(":scope > .review-grid")) stale.remove();
    this.frame = el("div", { cls: "review-grid" });
    this.frame.append(this.toolbar, this.help, this.grid, this.bar, this.overlay);
    this.root.append(this.frame);

    this.onKey = (event) => this.key(event);
    this.grid.addEventListener("keydown", this.onKey);
    this.overlay.addEventListener("keydown", (event) => this.viewerKey(event));
    this.onBeforeUnload = (event) => {
      if (this.pending.size) {
        event.preventDefault();
        event.returnValue = "";
      }
    };
    window.addEventListener("beforeunload", this.onBeforeUnload);
    // Streamlit's own navigation does not unload the page: ask before following its links.
    this.onNavigate = (event) => {
      const link = event.target.closest && event.target.closest("a[href]");
      if (!link || !this.pending.size || !link.closest('[data-testid="stSidebar"]')) return;
      const ok = window.confirm(
        `${this.pending.size} unsaved change(s). Leave this page? They stay in this tab until ` +
          "you Update or Discard them.",
      );
      if (!ok) {
        event.preventDefault();
        event.stopImmediatePropagation();
      }
    };
    document.addEventListener("click", this.onNavigate, true);
  }

  destroy() {
    window.removeEventListener("beforeunload", this.onBeforeUnload);
    document.removeEventListener("click", this.onNavigate, true);
  }

  // --- data from Python ----------------------------------------------------------------------

  update(args) {
    this.args = args;
    const data = args.data;
    if (data.scrape !== this.scrape) {
      this.scrape = data.scrape;
      this.pending = loadPending(data.scrape);
      this.selected.clear();
      this.failures.clear();
      this.gaveUp.clear();
    }
    const ack = data.ack;
    if (ack && ack.nonce !== this.lastAck) {
      this.lastAck = ack.nonce;
      if (ack.nonce === this.saving) {
        if (ack.ok) {
          for (const key of ack.sent || []) {
            // A pick made while the update was saving is newer than what was saved: kept.
            const sent = this.sent.get(key);
            const now = this.pending.get(key);
            if (now && sent && now.value === sent.value) this.pending.delete(key);
          }
          this.selected.clear();
        }
        this.saving = null;
        this.savePending();
      }
    }
    const ids = new Set(data.items.map((i) => i.id));
    for (const id of [...this.selected]) if (!ids.has(id)) this.selected.delete(id);
    if (!ids.has(this.focusId)) this.focusId = data.items.length ? data.items[0].id : null;
    if (data.open && data.open.nonce !== this.openedNonce) {
      this.openedNonce = data.open.nonce;
      const item = data.open.where === "last" ? data.items.at(-1) : data.items[0];
      if (item) this.openViewer(item.id);
    }
    this.render();
  }

  get data() {
    return this.args.data;
  }

  item(id) {
    return this.data.items.find((i) => i.id === id);
  }

  // The value a tile shows: its pending change, else the current one. A placeholder chosen and
  // not saved yet shows no color, as Update will leave it (unless a color was chosen after it).
  value(item, field) {
    const change = this.pending.get(`${item.id}:${field}`);
    if (change) return change.value;
    const type = this.pending.get(`${item.id}:image_type`);
    if (field === "color" && type && type.value === this.data.placeholder) return null;
    return item[field];
  }

  // An <img> of the first of urls the server has not failed to send, else the next, else the
  // inline "no image". One the server had none for is not asked again: drawing the tiles again
  // (any key) must not send its requests again, nor show a broken picture meanwhile.
  picture(urls, attrs) {
    const chain = urls.filter((u) => u && !this.gaveUp.has(new URL(u, document.baseURI).href));
    chain.push(this.data.missing);
    const img = el("img", { ...attrs, src: chain.shift() }); // (src last: after loading=lazy)
    img.addEventListener("error", () => this.failed(img, chain));
    return img;
  }

  // A picture can be asked for before the sign-in's cookie is set: each is tried three times
  // in all (whichever <img> asked), then given up for the next of the <img>'s chain.
  failed(img, chain) {
    if (img.src.startsWith("data:")) return; // the inline "no image": nothing else to try
    const url = img.src.split("?")[0];
    const failures = (this.failures.get(url) || 0) + 1;
    this.failures.set(url, failures);
    const next = () => {
      if (chain.length) img.src = chain.shift();
    };
    if (failures >= 3) {
      this.gaveUp.add(url);
      next();
      return;
    }
    setTimeout(() => {
      if (!img.isConnected) return; // (drawn again meanwhile: the new <img> asks)
      if (this.gaveUp.has(url)) next();
      else img.src = `${url}?retry=${failures}`;
    }, 400 * failures);
  }

  savePending() {
    const key = pendingKey(this.scrape);
    if (this.pending.size) sessionStorage.setItem(key, JSON.stringify([...this.pending.values()]));
    else sessionStorage.removeItem(key);
  }

  // --- changes -------------------------------------------------------------------------------

  setValue(item, field, value) {
    if (!item.fixable || (field === "color" && this.data.color_locked)) return;
    const key = `${item.id}:${field}`;
    const colorKey = `${item.id}:color`;
    const type = this.pending.get(`${item.id}:image_type`);
    const toPlaceholder = type !== undefined && type.value === this.data.placeholder;
    // The current color chosen on a tile turned placeholder is a change all the same: without it,
    // Update would clear the color.
    if (value === item[field] && !(field === "color" && toPlaceholder)) this.pending.delete(key);
    else this.pending.set(key, { id: item.id, field, value, seen: item[field] });
    if (field === "image_type") {
      const color = this.pending.get(colorKey);
      // A placeholder has no color: a color chosen before is dropped with it. Another type
      // keeps the current color: choosing it again is no change.
      if (value === this.data.placeholder || (color && color.value === item.color)) {
        this.pending.delete(colorKey);
      }
    }
    this.savePending();
  }

  // The tiles a key acts on: the selection when the focused tile is in it, else the focused one.
  targets() {
    if (this.focusId !== null && this.selected.has(this.focusId)) {
      return this.data.items.filter((i) => this.selected.has(i.id));
    }
    const focused = this.item(this.focusId);
    return focused ? [focused] : [];
  }

  setType(index) {
    const value = this.data.types[index];
    const targets = this.targets();
    for (const item of targets) this.setValue(item, "image_type", value);
    this.redraw(targets.map((i) => i.id));
  }

  apply() {
    if (!this.pending.size || this.saving || !this.data.can_fix) return;
    const nonce = `${Date.now()}-${Math.random().toString(36).slice(2)}`;
    this.saving = nonce;
    this.sent = new Map(this.pending);
    this.args.setTriggerValue("update", { nonce, changes: [...this.pending.values()] });
    this.render();
    this.expireSaving(nonce);
  }

  // No answer (the connection dropped): the changes are still here, and Update works again.
  expireSaving(nonce) {
    setTimeout(() => {
      if (this.saving === nonce) {
        this.saving = null;
        this.render();
      }
    }, 20000);
  }

  discard() {
    this.pending.clear();
    this.savePending();
    this.render();
  }

  undo() {
    if (this.saving || !this.data.undo) return;
    const nonce = `${Date.now()}-${Math.random().toString(36).slice(2)}`;
    this.saving = nonce;
    this.args.setTriggerValue("undo", { nonce });
    this.render();
    this.expireSaving(nonce);
  }

  // --- selection and focus -------------------------------------------------------------------

  toggle(id, range) {
    const before = new Set(this.selected);
    const items = this.data.items.filter((i) => i.fixable);
    if (range && this.anchor !== null) {
      const ids = this.data.items.map((i) => i.id);
      const [a, b] = [ids.indexOf(this.anchor), ids.indexOf(id)].sort((x, y) => x - y);
      if (a >= 0 && b >= 0) {
        for (const i of this.data.items.slice(a, b + 1)) if (i.fixable) this.selected.add(i.id);
      }
    } else if (this.selected.has(id)) {
      this.selected.delete(id);
    } else if (items.some((i) => i.id === id)) {
      this.selected.add(id);
    }
    this.anchor = id;
    const changed = this.data.items.filter((i) => before.has(i.id) !== this.selected.has(i.id));
    this.redraw(changed.map((i) => i.id));
  }

  selectPage() {
    const fixable = this.data.items.filter((i) => i.fixable);
    const all = fixable.length && fixable.every((i) => this.selected.has(i.id));
    this.selected = all ? new Set() : new Set(fixable.map((i) => i.id));
    this.render();
  }

  focusTile(id) {
    this.focusId = id;
    for (const tile of this.grid.children) {
      tile.tabIndex = Number(tile.dataset.id) === id ? 0 : -1;
    }
    const tile = this.grid.querySelector(`[data-id="${id}"]`);
    if (tile) {
      tile.focus({ preventScroll: true });
      tile.scrollIntoView({ block: "nearest" });
    }
  }

  columns() {
    const tiles = [...this.grid.children];
    if (!tiles.length) return 1;
    const top = tiles[0].offsetTop;
    const count = tiles.findIndex((t) => t.offsetTop !== top);
    return count === -1 ? tiles.length : count;
  }

  move(delta) {
    const items = this.data.items;
    const at = items.findIndex((i) => i.id === this.focusId);
    const next = Math.min(items.length - 1, Math.max(0, (at < 0 ? 0 : at) + delta));
    if (items[next]) this.focusTile(items[next].id);
  }

  // --- keyboard ------------------------------------------------------------------------------

  key(event) {
    const inSelect = event.target.tagName === "SELECT";
    if (inSelect) {
      if (event.key === "Escape" || (event.key === "Enter" && !event.ctrlKey)) {
        event.preventDefault();
        this.focusTile(this.focusId);
      } else if (event.key === "Enter" && event.ctrlKey) {
        event.preventDefault();
        this.apply();
      }
      return;
    }
    if (event.altKey || event.metaKey) return;
    const key = event.key;
    const handled = () => {
      event.preventDefault();
      event.stopPropagation();
    };
    if (event.ctrlKey) {
      if (key === "Enter") {
        handled();
        this.apply();
      }
      return;
    }
    if (key === "ArrowRight") (handled(), this.move(1));
    else if (key === "ArrowLeft") (handled(), this.move(-1));
    else if (key === "ArrowDown") (handled(), this.move(this.columns()));
    else if (key === "ArrowUp") (handled(), this.move(-this.columns()));
    else if (key === "Home") (handled(), this.move(-1e6));
    else if (key === "End") (handled(), this.move(1e6));
    else if (key in TYPE_KEYS && this.data.can_fix) (handled(), this.setType(TYPE_KEYS[key]));
    else if (key === "c" && this.data.can_fix) (handled(), this.openColor());
    else if (key === " " || key === "x") (handled(), this.toggle(this.focusId, event.shiftKey));
    else if (key === "a") (handled(), this.selectPage());
    else if (key === "Enter") (handled(), this.openViewer(this.focusId));
    else if (key === "u") (handled(), this.apply());
    else if (key === "d") (handled(), this.toggleDense());
    else if (key === "?") (handled(), this.toggleHelp());
    else if (key === "Escape") (handled(), this.selected.clear(), this.render());
  }

  openColor(where = this.grid) {
    const tile = where.querySelector(
      where === this.grid ? `[data-id="${this.focusId}"] select.color` : "select.color",
    );
    if (!tile || tile.disabled) return;
    tile.focus();
    try {
      tile.showPicker();
    } catch {
      // Not every browser opens a native list on request: the focused list takes the arrows.
    }
  }

  toggleDense() {
    this.dense = !this.dense;
    localStorage.setItem("tagdesk.dense", this.dense ? "1" : "0");
    this.render();
    this.focusTile(this.focusId);
  }

  toggleHelp() {
    this.help.hidden = !this.help.hidden;
  }

  // --- rendering -----------------------------------------------------------------------------

  render() {
    const data = this.data;
    this.grid.classList.toggle("dense", this.dense);
    this.renderToolbar();
    this.renderHelp();
    const focusedHere = this.root.activeElement && this.grid.contains(this.root.activeElement);
    const activeSelect =
      focusedHere && this.root.activeElement.tagName === "SELECT" ? this.root.activeElement : null;
    const tiles = data.items.map((item) => this.tile(item));
    if (activeSelect) {
      // Keep the tile whose list the user is in (replacing it would close the list).
      const old = activeSelect.closest(".tile");
      const index = tiles.findIndex((t) => t.dataset.id === old.dataset.id);
      if (index >= 0) tiles[index] = old;
    }
    this.grid.replaceChildren(...tiles);
    if (!data.items.length) this.grid.append(el("p", { cls: "empty", text: data.empty || "" }));
    if (focusedHere && this.focusId !== null) this.focusTile(this.focusId);
    this.renderBar();
    if (this.viewer) this.renderViewer();
  }

  // Redraw only these tiles: a key or a pick changes one or a few, and rebuilding all 96 tiles
  // (and their pictures) on every key would cost the analyst a frame or two each time.
  redraw(ids) {
    const focusedHere = this.root.activeElement && this.grid.contains(this.root.activeElement);
    for (const id of new Set(ids)) {
      const old = this.grid.querySelector(`[data-id="${id}"]`);
      const item = this.item(id);
      if (old && item) old.replaceWith(this.tile(item));
    }
    this.renderToolbar();
    if (focusedHere && this.focusId !== null) this.focusTile(this.focusId);
    this.renderBar();
    if (this.viewer) this.renderViewer();
  }

  renderToolbar() {
    const data = this.data;
    const parts = [];
    if (data.can_fix) {
      const selectPage = el("button", { type: "button", cls: "ghost", text: "Select page (a)" });
      selectPage.onclick = () => this.selectPage();
      parts.push(selectPage);
      if (this.selected.size) {
        parts.push(el("span", { cls: "count", text: `${this.selected.size} selected` }));
        const clear = el("button", { type: "button", cls: "ghost", text: "Clear (Esc)" });
        clear.onclick = () => {
          this.selected.clear();
          this.render();
        };
        parts.push(clear);
      }
    }
    const dense = el("button", {
      type: "button",
      cls: "ghost",
      "aria-pressed": this.dense ? "true" : "false",
      text: this.dense ? "Comfortable view (d)" : "Dense view (d)",
    });
    dense.onclick = () => this.toggleDense();
    const help = el("button", { type: "button", cls: "ghost", text: "Keys (?)" });
    help.onclick = () => this.toggleHelp();
    parts.push(el("span", { cls: "spacer" }), dense, help);
    this.toolbar.replaceChildren(...parts);
  }

  renderHelp() {
    if (this.help.childElementCount) return;
    const rows = [
      ["← → ↑ ↓", "move between tiles (click a tile first)"],
      ["1 2 3", "Image Type: Dealer photo, Stock photo, Placeholder"],
      ["c", "open the color list (type a letter, Enter)"],
      ["space", "select; shift-click selects a range; a selects the page"],
      ["", "with tiles selected, 1/2/3 and c change every selected tile"],
      ["Enter", "large view: zoom with the wheel or + −, drag to pan, ← → for the next"],
      ["u, Ctrl+Enter", "Update: save every change"],
      ["d", "dense view"],
      ["Esc", "clear the selection, close the large view"],
    ];
    this.help.append(
      el("strong", { text: "Keyboard" }),
      el("dl", {}, ...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])),
    );
  }

  badges(item) {
    const out = [];
    if (item.status === "ml_failure") out.push(["ML failure", "red"]);
    else if (item.status === "error") out.push(["Image error", "orange"]);
    if (item.fixes) out.push([`Fixed ×${item.fixes}`, "blue"]);
    if (item.override) out.push(["Advertiser's override", "violet"]);
    if (item.pending) out.push(["Pending sync", "yellow"]);
    return out.map(([text, color]) => el("span", { cls: `badge ${color}`, text }));
  }

  selectFor(item, field, where) {
    const data = this.data;
    const options = field === "image_type" ? data.types : data.colors;
    const current = this.value(item, field);
    const select = el("select", {
      cls: field === "image_type" ? "type" : "color",
      "aria-label": `${field === "image_type" ? "Image Type" : "Color"} of #${item.position}`,
      disabled: !item.fixable || (field === "color" && data.color_locked),
      title: field === "color" && data.color_locked ? "Comes from the advertiser's feed" : null,
    });
    if (!options.includes(current)) {
      // No color (a placeholder), or a feed's color that names none of ours: shown as it is.
      select.append(el("option", { value: "", text: current ? `Feed: ${current}` : "No color" }));
    }
    for (const option of options) select.append(el("option", { value: option, text: option }));
    select.value = options.includes(current) ? current : "";
    select.addEventListener("change", () => {
      if (!select.value) return;
      this.focusId = item.id;
      // A pick on a selected tile changes every selected tile (as a key does).
      const targets = this.selected.has(item.id) ? this.targets() : [item];
      for (const target of targets) this.setValue(target, field, select.value);
      this.redraw(targets.map((t) => t.id));
      if (where === "viewer") this.overlay.querySelector("img")?.focus();
      else this.focusTile(item.id);
    });
    return select;
  }

  tile(item) {
    const data = this.data;
    const changed =
      this.pending.has(`${item.id}:image_type`) || this.pending.has(`${item.id}:color`);
    const tile = el("div", {
      cls: [
        "tile",
        changed ? "changed" : "",
        this.selected.has(item.id) ? "selected" : "",
        item.fixable ? "" : "locked",
      ].join(" "),
      role: "gridcell",
      tabindex: item.id === this.focusId ? 0 : -1,
      "data-id": item.id,
      "aria-selected": this.selected.has(item.id) ? "true" : "false",
      "aria-label": `#${item.position}`,
    });
    const img = this.picture([item.thumb], {
      alt: `#${item.position}`,
      loading: "lazy",
      decoding: "async",
      width: 240,
      height: 180,
      draggable: "false",
    });
    const check = el("input", {
      type: "checkbox",
      cls: "check",
      "aria-label": `Select #${item.position}`,
      tabindex: -1,
      disabled: !item.fixable || !data.can_fix,
    });
    check.checked = this.selected.has(item.id);
    check.addEventListener("click", (event) => {
      event.preventDefault();
      this.focusId = item.id;
      this.toggle(item.id, event.shiftKey);
      this.focusTile(item.id);
    });
    const zoom = el("button", {
      type: "button",
      cls: "zoom",
      title: "Large view (Enter)",
      "aria-label": `Large view of #${item.position}`,
      tabindex: -1,
      text: "⤢",
    });
    zoom.onclick = () => this.openViewer(item.id);
    const picture = el("div", { cls: "picture" }, img, check, zoom);
    picture.addEventListener("dblclick", () => this.openViewer(item.id));
    const ml = `ML: ${item.ml_type}${percent(item.conf)} · ${item.ml_color || "None"}`;
    const selects = el(
      "div",
      { cls: "selects" },
      this.selectFor(item, "image_type", "tile"),
      this.selectFor(item, "color", "tile"),
    );
    tile.append(
      picture,
      el("div", { cls: "title", text: `#${item.position} ${item.title}`.trim(), title: item.title }),
      el("div", { cls: "ml", text: ml }),
      el("div", { cls: "badges" }, ...this.badges(item)),
      selects,
    );
    tile.addEventListener("click", (event) => {
      if (event.target.closest("select, button, input")) return;
      if (event.shiftKey && data.can_fix) this.toggle(item.id, true);
      this.focusTile(item.id);
    });
    return tile;
  }

  renderBar() {
    const data = this.data;
    const parts = [];
    if (this.pending.size) {
      const here = new Set(data.items.map((i) => i.id));
      const elsewhere = [...this.pending.values()].filter((c) => !here.has(c.id)).length;
      const label = `${this.pending.size} unsaved change(s)${
        elsewhere ? ` (${elsewhere} on other pages or filters)` : ""
      }`;
      const update = el("button", {
        type: "button",
        cls: "primary",
        text: this.saving ? "Saving…" : "Update (u)",
        disabled: Boolean(this.saving),
      });
      update.onclick = () => this.apply();
      const discard = el("button", { type: "button", cls: "ghost", text: "Discard" });
      discard.onclick = () => this.discard();
      parts.push(el("span", { cls: "count", text: label }), update, discard);
    } else if (data.can_fix) {
      parts.push(
        el("span", {
          cls: "hint",
          text: "Pick values, or click a tile and use the keys (?): nothing is saved until Update.",
        }),
      );
    }
    if (data.undo && data.can_fix) {
      const undo = el("button", {
        type: "button",
        cls: "ghost",
        text: `Undo last update (${data.undo.count} fix(es))`,
        disabled: Boolean(this.saving),
      });
      undo.onclick = () => this.undo();
      parts.push(el("span", { cls: "spacer" }), undo);
    }
    this.bar.hidden = !parts.length;
    this.bar.classList.toggle("active", this.pending.size > 0);
    this.bar.replaceChildren(...parts);
  }

  // --- large view ----------------------------------------------------------------------------

  openViewer(id) {
    if (id === null || id === undefined || !this.item(id)) return;
    this.focusId = id;
    this.viewer = { id, zoom: 1, x: 0, y: 0 };
    this.overlay.hidden = false;
    this.renderViewer();
    this.overlay.querySelector(".stage").focus();
  }

  closeViewer() {
    const id = this.viewer?.id;
    this.viewer = null;
    this.overlay.hidden = true;
    this.overlay.replaceChildren();
    this.render();
    if (id !== undefined) this.focusTile(id);
  }

  step(delta) {
    const items = this.data.items;
    const at = items.findIndex((i) => i.id === this.viewer.id);
    const next = at + delta;
    if (next >= 0 && next < items.length) {
      this.viewer = { id: items[next].id, zoom: 1, x: 0, y: 0 };
      this.focusId = items[next].id;
      this.renderViewer();
      this.overlay.querySelector(".stage").focus();
    } else if (delta > 0 && this.data.page < this.data.pages) {
      this.args.setTriggerValue("page", { to: this.data.page + 1, open: "first", nonce: `${Date.now()}` });
    } else if (delta < 0 && this.data.page > 1) {
      this.args.setTriggerValue("page", { to: this.data.page - 1, open: "last", nonce: `${Date.now()}` });
    }
  }

  zoomBy(factor) {
    const v = this.viewer;
    v.zoom = Math.min(8, Math.max(1, v.zoom * factor));
    if (v.zoom === 1) v.x = v.y = 0;
    this.placeImage();
  }

  placeImage() {
    const img = this.overlay.querySelector(".stage img");
    if (!img || !this.viewer) return;
    const { zoom, x, y } = this.viewer;
    img.style.transform = `translate(${x}px, ${y}px) scale(${zoom})`;
    const label = this.overlay.querySelector(".zoom-level");
    if (label) label.textContent = `${Math.round(zoom * 100)}%`;
  }

  viewerKey(event) {
    if (!this.viewer) return;
    if (event.target.tagName === "SELECT") {
      if (event.key === "Escape") {
        event.preventDefault();
        this.overlay.querySelector(".stage").focus();
      }
      return;
    }
    const key = event.key;
    const item = this.item(this.viewer.id);
    const handled = () => {
      event.preventDefault();
      event.stopPropagation();
    };
    if (key === "Escape") (handled(), this.closeViewer());
    else if (key === "ArrowRight" || key === "n") (handled(), this.step(1));
    else if (key === "ArrowLeft" || key === "p") (handled(), this.step(-1));
    else if (key === "+" || key === "=") (handled(), this.zoomBy(1.5));
    else if (key === "-") (handled(), this.zoomBy(1 / 1.5));
    else if (key === "0") (handled(), this.zoomBy(0));
    else if (key in TYPE_KEYS && this.data.can_fix && item) {
      handled();
      this.setValue(item, "image_type", this.data.types[TYPE_KEYS[key]]);
      this.renderViewer();
    } else if (key === "c" && this.data.can_fix) (handled(), this.openColor(this.overlay));
    else if (key === "u" || (key === "Enter" && event.ctrlKey)) (handled(), this.apply());
  }

  renderViewer() {
    const item = this.item(this.viewer?.id);
    if (!item) {
      this.viewer = null;
      this.overlay.hidden = true;
      return;
    }
    const data = this.data;
    const items = data.items;
    const at = items.indexOf(item);
    // The original, else the thumbnail, else "no image".
    const img = this.picture([item.original, item.thumb], {
      alt: `#${item.position}`,
      draggable: "false",
    });
    const stage = el("div", { cls: "stage", tabindex: 0, "aria-label": "Image: wheel zooms" }, img);
    stage.addEventListener("wheel", (event) => {
      event.preventDefault();
      this.zoomBy(event.deltaY < 0 ? 1.25 : 0.8);
    });
    let drag = null;
    stage.addEventListener("pointerdown", (event) => {
      drag = { x: event.clientX - this.viewer.x, y: event.clientY - this.viewer.y };
      stage.setPointerCapture(event.pointerId);
    });
    stage.addEventListener("pointermove", (event) => {
      if (!drag || this.viewer.zoom === 1) return;
      this.viewer.x = event.clientX - drag.x;
      this.viewer.y = event.clientY - drag.y;
      this.placeImage();
    });
    stage.addEventListener("pointerup", () => {
      drag = null;
    });
    const button = (text, label, action, disabled = false) => {
      const b = el("button", { type: "button", cls: "ghost", text, "aria-label": label, disabled });
      b.onclick = action;
      return b;
    };
    const lastOverall = data.page >= data.pages && at === items.length - 1;
    const firstOverall = data.page <= 1 && at === 0;
    const nav = el(
      "div",
      { cls: "nav" },
      button("‹ Previous", "Previous image", () => this.step(-1), firstOverall),
      el("span", { cls: "where", text: `${at + 1} of ${items.length} · page ${data.page} of ${data.pages}` }),
      button("Next ›", "Next image", () => this.step(1), lastOverall),
      el("span", { cls: "spacer" }),
      button("−", "Zoom out", () => this.zoomBy(1 / 1.5)),
      el("span", { cls: "zoom-level", text: "100%" }),
      button("+", "Zoom in", () => this.zoomBy(1.5)),
      button("✕ Close", "Close the large view", () => this.closeViewer()),
    );
    const probabilities = Object.entries(item.probabilities || {})
      .sort((a, b) => b[1] - a[1])
      .map(([label, p]) => `${label}${percent(p)}`)
      .join(" · ");
    const facts = el(
      "div",
      { cls: "facts" },
      el("div", { cls: "title", text: `#${item.position} ${item.title}`.trim() }),
      el("div", { cls: "ml", text: `ML: ${item.ml_type} · ${item.ml_color || "None"}` }),
      probabilities ? el("div", { cls: "ml", text: probabilities }) : null,
      el("div", { cls: "badges" }, ...this.badges(item)),
      el("label", { text: "Image Type (1 2 3)" }),
      this.selectFor(item, "image_type", "viewer"),
      el("label", { text: "Color (c)" }),
      this.selectFor(item, "color", "viewer"),
      el("label", { text: "Image URL" }),
      el("code", { text: item.url }),
      el("label", { text: "Vehicle page" }),
      el("code", { text: item.page }),
      item.error ? el("p", { cls: "error", text: item.error }) : null,
      el("label", { text: "History" }),
      this.history(item),
    );
    const hadFocus = this.root.activeElement && this.overlay.contains(this.root.activeElement);
    this.overlay.replaceChildren(nav, el("div", { cls: "body" }, stage, facts));
    this.placeImage();
    // The keys keep working after a redraw (a fix, the next image): focus stays in the view.
    if (hadFocus) stage.focus();
  }

  history(item) {
    if (!item.history || !item.history.length) {
      return el("p", { cls: "hint", text: item.fixes ? "…" : "No manual fix yet." });
    }
    const rows = item.history.map((h) =>
      el(
        "tr",
        {},
        el("td", { text: h.at }),
        el("td", { text: h.user }),
        el("td", { text: h.field }),
        el("td", { text: `${h.old ?? "None"} → ${h.new ?? "None"}` }),
        el("td", { text: h.sync }),
      ),
    );
    return el("table", { cls: "history" }, el("tbody", {}, ...rows));
  }
}

export default function (args) {
  const root = args.parentElement;
  let grid = STATE.get(root);
  if (!grid) {
    grid = new Grid(root, args);
    STATE.set(root, grid);
  }
  grid.update(args);
  return () => {
    grid.destroy();
    STATE.delete(root);
  };
}
