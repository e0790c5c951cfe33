"""aimg.training: datasets over episodes, the flow-matching trainer, evaluation.

Modules: `config` (the `data:` and `train:` preset sections), `dataset` (training clips from
`aimg.episodes`: video, rendered action images, cameras, text dropout), `order` (deterministic,
resumable data order per rank), `tasks` (the task mixture), `loss` (the pieces of the objective
of docs/reference.md §5), `objective` (batch -> packed latents -> masked flow loss),
`latent_cache` (optional on-disk latents), `distributed` (torchrun, DDP, FSDP2),
`checkpointing` (atomic, exact resume), `trainer` (the loop), `run` (assembly for `aimg train`),
`evaluate` (open-loop evaluation for `aimg eval`), `distill` (few-step, guidance-free students
for `aimg distill`), `distill_eval` (students against their teacher, guidance sweeps), `cli`.

May import the core (`aimg.*`). Nothing imports this package except its own CLI.
"""
