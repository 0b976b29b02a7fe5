"""ABI (Autonomous Basis Injection) reproduction library.

A small domain module reads tap hidden states of a frozen language model and adds a
correction to its final hidden state before the frozen LM head. See the book for the claims.
"""

__version__ = "0.1.0"
