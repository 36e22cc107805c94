from __future__ import annotations

import pytest

from tests.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """The tiny model and tokenizer saved as a checkpoint folder, as the training commands read it."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = tiny_tokenizer()
    tiny_model(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
