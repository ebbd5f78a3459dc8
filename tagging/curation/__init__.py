"""Dataset curation: every step from the team's fixes to a versioned, leak-free training set.

Each step is a pure function over a :class:`~tagging.curation.manifest.Manifest` (no database, no
Streamlit, no network), deterministic given its parameters and the recipe's seed, so that a version
can be replayed byte for byte from its :class:`~tagging.curation.recipe.Recipe` and inputs. One
module per concern, as torchvision's references:

- :mod:`.manifest`: the rows of a version, their canonical CSV and its SHA-256;
- :mod:`.extend`: parent rows + new rows (relabels recorded as origins);
- :mod:`.size`: exclude images under a minimum width and height;
- :mod:`.duplicates`: near-duplicate clusters (pHash, optionally embeddings) and their conflicts;
- :mod:`.label_issues`: likely label errors by confident learning (cleanlab), advisory;
- :mod:`.prune`: the reviewers' keep / drop / relabel decisions;
- :mod:`.crop`: the border and letterbox trimmer and the crop-model interface;
- :mod:`.split`: the stratified, grouped train/test split with named per-advertiser test sets;
- :mod:`.balance`: class counts per split and advertiser, and their warnings;
- :mod:`.groups`: union-find, shared by the clustering and the split;
- :mod:`.recipe`: the recorded steps and :func:`~tagging.curation.recipe.replay`.

Storage (``db/datasets.py``), the archive of image bytes, the page and the CLI sit on top.
"""
