"""distill: self-hosted teacher -> student LLM distillation.

`import distill` stays light: no torch, transformers, vllm or deepspeed at import time.
"""

__version__ = "0.1.0"
