"""Packing (trainers/packing.py): rows that fit their budget, tokens that see only their own example."""

import torch

from dreamd.trainers.packing import PADDING, attention_mask, pack, pack_groups, segment_mean


def test_groups_fill_rows_first_fit_and_a_long_example_gets_its_own_row():
    assert pack_groups([3, 4, 2, 5, 1], capacity=6) == [[0, 2, 4], [1], [3]]
    assert pack_groups([9, 2, 2], capacity=6) == [[0], [1, 2]]  # 9 alone: longer than the budget
    assert pack_groups([], capacity=6) == []


def test_pack_lays_examples_end_to_end_with_their_own_positions_and_pads_the_rest():
    packed = pack([[0, 2], [1]], [[5, 6], [7, 8, 9], [4]], starts=[0, 3, 10], pad_id=0)
    assert packed.ids.tolist() == [[5, 6, 4], [7, 8, 9]]
    assert packed.positions.tolist() == [[0, 1, 10], [3, 4, 5]]
    assert packed.segments.tolist() == [[0, 0, 2], [1, 1, 1]]
    short = pack([[0], [1]], [[5], [6, 7]], starts=[0, 0], pad_id=0)
    assert short.ids.tolist() == [[5, 0], [6, 7]] and short.segments[0, 1] == PADDING


def test_a_token_attends_to_its_own_example_only_causally_and_padding_to_padding():
    segments = torch.tensor([[0, 0, 1, PADDING]])
    mask = attention_mask(segments, segments, causal=True, dtype=torch.float32)
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    later = attention_mask(torch.tensor([[1, 0]]), segments, causal=False, dtype=torch.float32)
    assert (later[0, 0] == 0).int().tolist() == [[0, 0, 1, 0], [1, 1, 0, 0]]
    assert later.min() == torch.finfo(torch.float32).min


def test_segment_mean_averages_each_examples_counted_tokens():
    values = torch.tensor([[1.0, 3.0, 10.0, 99.0]])
    segments = torch.tensor([[0, 0, 1, PADDING]])
    counted = torch.tensor([[True, True, True, False]])
    assert segment_mean(values, segments, counted, count=3).tolist() == [2.0, 10.0, 0.0]


def test_a_chunks_causal_mask_is_the_whole_masks_rows_from_its_offset():
    segments = torch.tensor([[0, 0, 0, 1, 1, PADDING]])
    whole = attention_mask(segments, segments, causal=True, dtype=torch.float32)
    for start in range(6):
        for end in range(start + 1, 7):
            chunk = attention_mask(segments[:, start:end], segments[:, :end], causal=True, dtype=torch.float32,
                                   offset=start)
            assert torch.equal(chunk, whole[:, :, start:end, :end]), (start, end)
