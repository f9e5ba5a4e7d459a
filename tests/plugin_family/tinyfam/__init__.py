"""A fourth GAN family defined outside ganforge, registered through the `ganforge.families`
entry point (tinyfam-0.1.dist-info/entry_points.txt): a network file, a loss file, a family
file and a preset (../tiny.yaml), with nothing edited under trainers/ or pipelines/."""
