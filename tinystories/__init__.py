"""tinystories: synthesize, tokenize, train, grade and inspect TinyStories-scale language models.

Submodules are imported on demand (``tinystories.tokenizer``, ``tinystories.data``,
``tinystories.model`` ...) so that ``import tinystories`` stays cheap and works without the
optional extras (openai, triton).
"""

__version__ = "0.1.0"
