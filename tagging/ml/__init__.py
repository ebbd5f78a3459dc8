"""The models, torchvision-reference style, with no database: the Image Type network and its
artifacts (:mod:`.model`), transforms, generated training data (:mod:`.synth`, :mod:`.data`),
training (:mod:`.train`), evaluation (:mod:`.evaluate`), batched inference (:mod:`.inference`)
and the color models (:mod:`.color`: the vendor adapter and the embedded default).

A new architecture goes in :mod:`.model`; a new training or evaluation step in a module of its own
here. The import contract forbids this package the database.
"""
