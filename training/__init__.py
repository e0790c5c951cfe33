"""aimg.training: datasets over episodes, the flow-matching trainer, distillation, evaluation.

May import the core (`aimg.*`). Nothing imports this package except its own CLI.
"""
