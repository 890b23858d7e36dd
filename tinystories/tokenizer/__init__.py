"""Tokens, part 1: the byte-level BPE tokenizer (GPT-2/GPT-Neo compatible) with a C++ core.

``Tokenizer`` encodes exactly like tiktoken's ``gpt2``, trains new vocabularies and keeps a corpus's top-K
tokens (the paper's 10K GPT-Neo vocabulary); ``resolve_tokenizer`` turns a name, a JSON file or a folder
into one. ``bpe`` holds the class, ``files`` the file formats and the pretrained cache, ``cli`` the
``tinystories tokenizer`` command.
"""

from tinystories.tokenizer.bpe import GPT2_PATTERN, Tokenizer, resolve_tokenizer
from tinystories.tokenizer.files import bytes_to_unicode

__all__ = ["GPT2_PATTERN", "Tokenizer", "bytes_to_unicode", "resolve_tokenizer"]
