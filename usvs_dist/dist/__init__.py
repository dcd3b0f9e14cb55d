"""The only code that touches process groups: collectives and the DeepSpeed engine.

`collectives` (gathers and rank/world queries that degrade to one process) is what losses
import; `engine` (DeepSpeed, imported inside its functions) is used by train/ and bench/step.py.
Ray's context, report and checkpoint calls are not here: they live in train/.
"""
