import pytest
import torch

from alignd.backends.base import ChatPrompt, FinishReason, SamplingParams
from alignd.sampling import reference_logprobs

PROMPT = ChatPrompt("how do I bake bread at home?")


def test_same_seed_gives_same_output_and_different_seeds_differ(tiny_policy):
    sampling = SamplingParams(temperature=1.0, max_tokens=24, seed=7)
    first = tiny_policy.sample([PROMPT], 4, sampling).completions[0]
    again = tiny_policy.sample([PROMPT], 4, sampling).completions[0]
    other = tiny_policy.sample([PROMPT], 4, SamplingParams(temperature=1.0, max_tokens=24, seed=8)).completions[0]
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.token_ids for c in first] != [c.token_ids for c in other]


def test_prompt_is_encoded_once_for_all_n_rows(tiny_policy):
    batch = tiny_policy.sample([PROMPT], 6, SamplingParams(temperature=1.0, max_tokens=16, seed=3))
    generated = batch.completions[0]
    # The prompt once, then every drawn token exactly once.
    assert batch.forward_tokens == batch.prompt_tokens[0] + sum(len(c.token_ids) for c in generated)


def test_token_logprobs_match_a_full_recomputation_under_the_sampling_distribution(tiny_policy):
    sampling = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, max_tokens=12, seed=11)
    batch = tiny_policy.sample([PROMPT], 3, sampling)
    prompt_ids = tiny_policy.tokenizer(tiny_policy.render(PROMPT), add_special_tokens=False)["input_ids"]
    for completion in batch.completions[0]:
        ids = torch.tensor([prompt_ids + completion.token_ids])
        with torch.no_grad():
            logits = tiny_policy.model(ids).logits[0, len(prompt_ids) - 1 : -1]
        expected = reference_logprobs(logits, sampling).gather(-1, torch.tensor(completion.token_ids)[:, None])
        assert torch.allclose(torch.tensor(completion.token_logprobs), expected.squeeze(-1), atol=1e-4)


def test_left_padded_batch_decodes_each_prompt_as_if_alone(tiny_policy):
    prompts = [ChatPrompt("hi"), ChatPrompt("how do I bake bread at home with flour, water, yeast and salt?")]
    greedy = SamplingParams(temperature=0.0, max_tokens=10)
    together = tiny_policy.sample(prompts, 2, greedy).completions
    for prompt, rows in zip(prompts, together):
        alone = tiny_policy.sample([prompt], 1, greedy).completions[0][0]
        assert [c.token_ids for c in rows] == [alone.token_ids, alone.token_ids]


def test_max_tokens_bounds_length_and_sets_finish_reason(tiny_policy):
    batch = tiny_policy.sample([PROMPT], 8, SamplingParams(temperature=1.0, max_tokens=5, seed=0))
    for c in batch.completions[0]:
        assert 1 <= len(c.token_ids) <= 5
        assert len(c.token_logprobs) == len(c.token_ids)
        if c.finish_reason is FinishReason.LENGTH:
            assert len(c.token_ids) == 5
        else:
            assert c.token_ids[-1] in tiny_policy.eos_token_ids.tolist()


def test_stop_sequence_cuts_the_text_before_it(tiny_policy):
    # One row with a fixed seed draws the same tokens up to the stop point. The tiny model's
    # text is noise: take the first seed whose response has a few words.
    for seed in range(20):
        sampling = SamplingParams(temperature=1.0, max_tokens=40, seed=seed)
        free = tiny_policy.sample([PROMPT], 1, sampling).completions[0][0]
        words = free.text.split()
        if len(words) > 3:
            break
    assert len(words) > 3, free.text
    stop = words[2]
    cut = tiny_policy.sample([PROMPT], 1, SamplingParams(**{**sampling.__dict__, "stop": (stop,)})).completions[0][0]
    assert cut.finish_reason is FinishReason.STOP
    assert stop not in cut.text
    assert free.text.startswith(cut.text)
    assert len(cut.token_ids) < len(free.token_ids)


def test_chat_template_wraps_the_user_message(tiny_policy):
    rendered = tiny_policy.render(ChatPrompt("hello", system="be kind"))
    assert "<|im_start|>system\nbe kind" in rendered and rendered.endswith("<|im_start|>assistant\n")
    assert tiny_policy.render(ChatPrompt("hello", raw=True)) == "hello"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampling_on_cuda_matches_shapes_and_seeds():
    from alignd.backends.transformers_policy import TransformersPolicy
    from tests.tiny import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    policy = TransformersPolicy(model=tiny_model(len(tokenizer)), tokenizer=tokenizer, device="cuda")
    sampling = SamplingParams(temperature=1.0, max_tokens=8, seed=5)
    a = policy.sample([PROMPT], 4, sampling).completions[0]
    b = policy.sample([PROMPT], 4, sampling).completions[0]
    assert policy.device.startswith("cuda")
    assert [c.token_ids for c in a] == [c.token_ids for c in b]


def test_a_set_cancel_event_stops_sampling(tiny_policy):
    import threading

    from alignd.errors import Cancelled

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        tiny_policy.sample([PROMPT], 2, SamplingParams(max_tokens=50), cancel)
    # The lock is released: the next request runs.
    assert tiny_policy.sample([PROMPT], 1, SamplingParams(max_tokens=2)).completions[0][0].token_ids


def test_feeding_sampled_tokens_reproduces_the_hidden_states_of_decoding(tiny_policy):
    # How the vLLM backend's shadow gets hidden states: copy caches, teacher-force the new tokens.
    sampling = SamplingParams(temperature=1.0, max_tokens=12, seed=4)
    start = tiny_policy.begin(ChatPrompt("hello there"), sampling)
    decoded = tiny_policy.extend(start, 3, 5)
    shadow = tiny_policy.select(start, [0, 0, 0])
    tiny_policy.feed_tokens(shadow, decoded.token_ids)
    assert torch.allclose(shadow.hidden, decoded.hidden, atol=1e-4)
    # and it keeps following: one more block on the first row
    shadow_row, decoded_row = tiny_policy.select(shadow, [0]), tiny_policy.select(decoded, [0])
    more = tiny_policy.extend(decoded_row, 1, 4)
    tiny_policy.feed_tokens(shadow_row, [more.token_ids[0][len(decoded_row.token_ids[0]) :]])
    assert torch.allclose(shadow_row.hidden, more.hidden, atol=1e-4)


def test_each_row_has_its_own_random_stream(tiny_policy):
    # n=4 draws the first 4 responses of n=8 with the same seed: rows do not share a generator.
    sampling = SamplingParams(temperature=1.0, max_tokens=12, seed=5)
    four = tiny_policy.sample([PROMPT], 4, sampling).completions[0]
    eight = tiny_policy.sample([PROMPT], 8, sampling).completions[0]
    assert [c.token_ids for c in four] == [c.token_ids for c in eight[:4]]
    assert len({tuple(c.token_ids) for c in eight}) > 4
