"""extend / select / branch on the tiny model: KV reuse must give what a full recomputation gives."""

import pytest
import torch

from alignd.backends.base import ChatPrompt, FinishReason, SamplingParams
from alignd.sampling import reference_logprobs

PROMPT = ChatPrompt("tell me about bread")
SAMPLING = SamplingParams(temperature=0.9, top_k=30, max_tokens=40, seed=5)


def recompute(policy, prompt, token_ids, sampling):
    """Log pi_ref of each token and the final hidden state after each prefix, from scratch."""
    prompt_ids = policy.tokenizer(policy.render(prompt), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = policy.model(torch.tensor([prompt_ids + token_ids]), output_hidden_states=True)
    logits = out.logits[0, len(prompt_ids) - 1 : -1]
    logprobs = reference_logprobs(logits, sampling).gather(-1, torch.tensor(token_ids)[:, None]).squeeze(-1)
    return logprobs, out.hidden_states[-1][0, len(prompt_ids) - 1 :]


def test_blocks_after_a_selection_match_a_full_recomputation(tiny_policy):
    partial = tiny_policy.begin(PROMPT, SAMPLING)
    for _ in range(3):  # three rounds of blockwise selection
        blocks = tiny_policy.extend(partial, 4, 5)
        assert blocks.rows == 4
        partial = tiny_policy.select(blocks, [2])
    ids = partial.token_ids[0]
    logprobs, hidden = recompute(tiny_policy, PROMPT, ids, SAMPLING)
    assert torch.allclose(torch.tensor(partial.token_logprobs[0]), logprobs, atol=1e-4)
    assert torch.allclose(partial.hidden[0], hidden[len(ids)], atol=1e-4)


def test_extend_never_re_encodes_the_prefix(tiny_policy):
    partial = tiny_policy.begin(PROMPT, SAMPLING)
    after_prompt = partial.forward_tokens
    assert after_prompt == partial.prompt_tokens
    blocks = tiny_policy.extend(partial, 3, 4)
    # Each child feeds only its own block tokens.
    assert blocks.forward_tokens - after_prompt == sum(len(ids) for ids in blocks.token_ids)


def test_children_of_a_row_start_from_its_prefix_and_finished_rows_stay_finished(tiny_policy):
    short = SamplingParams(temperature=1.0, max_tokens=6, seed=2)
    partial = tiny_policy.extend(tiny_policy.begin(PROMPT, short), 2, 6)
    assert all(f is not None for f in partial.finish)
    again = tiny_policy.extend(partial, 3, 4)
    assert again.rows == 6 and again.done
    for row in range(6):
        assert again.token_ids[row] == partial.token_ids[row // 3]
    assert tiny_policy.completion(again, 0).finish_reason in (FinishReason.STOP, FinishReason.LENGTH)


@pytest.mark.parametrize("max_tokens", [40, 4])
def test_prefix_hidden_states_equal_the_states_seen_while_decoding(tiny_policy, max_tokens):
    # With max_tokens=4 every row finishes inside the block: its state must still be the one
    # after its final token, as in training.
    sampling = SamplingParams(temperature=0.9, top_k=30, max_tokens=max_tokens, seed=5)
    blocks = tiny_policy.extend(tiny_policy.begin(PROMPT, sampling), 3, 6)
    if max_tokens == 4:
        assert blocks.done
    states = tiny_policy.prefix_hidden_states(PROMPT, blocks.token_ids)
    for row, ids in enumerate(blocks.token_ids):
        assert states[row].shape == (len(ids) + 1, tiny_policy.hidden_size)
        assert torch.allclose(states[row][-1], blocks.hidden[row], atol=1e-4)


def test_branch_appends_the_given_tokens_with_their_reference_logprobs(tiny_policy):
    partial = tiny_policy.begin(PROMPT, SAMPLING)
    logprobs = tiny_policy.next_token_logprobs(partial)
    assert torch.isclose(logprobs.exp().sum(), torch.tensor(1.0), atol=1e-5)
    top = torch.topk(logprobs[0], 3).indices.tolist()
    children = tiny_policy.branch(partial, [top])
    assert [ids for ids in children.token_ids] == [[t] for t in top]
    assert torch.allclose(torch.tensor([lp[0] for lp in children.token_logprobs]), logprobs[0, top])
    _, hidden = recompute(tiny_policy, PROMPT, [top[1]], SAMPLING)
    assert torch.allclose(children.hidden[1], hidden[1], atol=1e-4)


def test_selecting_twice_from_the_same_blocks_gives_independent_rows(tiny_policy):
    blocks = tiny_policy.extend(tiny_policy.begin(PROMPT, SAMPLING), 2, 3)
    first = tiny_policy.extend(tiny_policy.select(blocks, [0]), 1, 3)
    second = tiny_policy.select(blocks, [0])
    # Extending `first` must not have touched the cache rows `second` copies.
    logprobs, hidden = recompute(tiny_policy, PROMPT, second.token_ids[0], SAMPLING)
    assert torch.allclose(second.hidden[0], hidden[-1], atol=1e-4)
    continued = tiny_policy.extend(second, 1, 3)
    logprobs, _ = recompute(tiny_policy, PROMPT, continued.token_ids[0], SAMPLING)
    assert torch.allclose(torch.tensor(continued.token_logprobs[0]), logprobs, atol=1e-4)
    assert len(first.token_ids[0]) == len(second.token_ids[0]) + 3
