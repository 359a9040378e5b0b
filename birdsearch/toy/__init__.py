"""The toy world, a small synthetic bird world in which the whole pipeline runs offline; installs as birdsearch.toy.

``birdsearch.toy.world.ensure_world(config)`` builds (once, into ``cache_root()/toy/``) and returns a
``ToyWorld``: a taxonomy, drawn photos (teacher training set and gallery), synthesised recordings
(student training, distillation, held-out queries, soundscapes) with their manifests, a toy
teacher (open_clip ``CLIP``) and two toy students (``transformers.ClapModel``, a realistic and a
perfect text side). ``birdsearch.toy.plugin.register()`` plugs it into the core from above: model
specs ``toy``, ``toy:perfect``, ``toy:small``, ``toy:small-perfect`` and ``toy:tiny`` then load them
through ``birdsearch.toy.models.toy_model_dir``, and ``toy[:PRESET]`` names its data for
``evaluate --dataset`` and ``distill --manifest``. Presets and every setting are in
``birdsearch.toy.config``.
"""
