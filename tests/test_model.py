"""The GPT itself: shapes, causality, weight tying, initialisation, Hugging Face name mapping."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nanodist.model import GPT, GPTConfig, cross_entropy, num_params
from nanodist.model.loss import chunked_linear_cross_entropy

CONFIG = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=50)


def make_model(config: GPTConfig = CONFIG, seed: int = 0) -> GPT:
    model = GPT(config)
    model.init_weights(seed)
    return model


def test_forward_gives_logits_and_backward_reaches_every_parameter():
    model = make_model()
    idx = torch.randint(0, CONFIG.vocab_size, (3, CONFIG.block_size), generator=torch.Generator().manual_seed(0))
    logits = model(idx)
    assert logits.shape == (3, CONFIG.block_size, CONFIG.vocab_size)
    F.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_untrained_loss_is_near_uniform():
    model = make_model()
    gen = torch.Generator().manual_seed(1)
    idx, targets = torch.randint(0, CONFIG.vocab_size, (2, 8, CONFIG.block_size), generator=gen)
    loss = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
    assert abs(loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.1


# Written down once from this code (torch's CPU generator is stable across releases): any change to
# the initialisation (per-parameter seeds, stds) or to the forward (attention, GELU, norms) moves them.
KNOWN_LOGITS = {
    0: [0.08849921, 0.00465244, -0.00303133, -0.04817931, 0.07843182],
    3: [-0.06503667, 0.02772173, 0.00539027, 0.14019419, -0.05395991],
}


def test_known_input_gives_known_output():
    """A fixed tiny model, seed and input give these literal logits (first and last position)."""
    model = make_model(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=4, vocab_size=5), seed=3)
    logits = model(torch.tensor([[0, 1, 2, 3]]))[0]
    for position, expected in KNOWN_LOGITS.items():
        assert logits[position].tolist() == pytest.approx(expected, abs=1e-7), f"position {position}"


def test_attention_is_causal():
    """Changing a later token never changes the logits of earlier positions."""
    model = make_model().eval()
    idx = torch.randint(0, CONFIG.vocab_size, (1, CONFIG.block_size), generator=torch.Generator().manual_seed(2))
    changed = idx.clone()
    changed[0, 10] = (changed[0, 10] + 1) % CONFIG.vocab_size
    a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_embedding_and_head_are_one_tied_parameter():
    model = make_model()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert sum(p.numel() for p in model.parameters()) == num_params(CONFIG) + CONFIG.block_size * CONFIG.n_embd


def test_untied_model_has_its_own_head():
    model = make_model(GPTConfig(2, 4, 32, 16, 50, tie_embeddings=False))
    assert model.lm_head.weight is not model.transformer.wte.weight


def test_residual_projections_use_scaled_init():
    model = make_model(GPTConfig(n_layer=8, n_head=4, n_embd=64, block_size=16, vocab_size=50))
    std = model.transformer.h["0"].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / (2 * 8) ** 0.5) < 0.001
    assert abs(model.transformer.h["0"].mlp.c_fc.weight.std().item() - 0.02) < 0.002


def test_parameter_names_follow_hugging_face_gpt2():
    names = {n for n, _ in make_model().named_parameters()}
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
            "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.bias",
            "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight",
            "transformer.ln_f.weight"} <= names


def test_padded_vocabulary_is_left_out_of_the_loss():
    """Padding columns, whatever their logits, change neither the loss nor its gradient."""
    logits = torch.randn(2, 5, 72, requires_grad=True)
    targets = torch.randint(0, 65, (2, 5))
    padded = cross_entropy(logits, targets, true_vocab_size=65)
    padded.backward()
    unpadded = F.cross_entropy(logits[..., :65].flatten(0, 1), targets.flatten())
    assert padded.item() == pytest.approx(unpadded.item(), rel=1e-6)
    assert cross_entropy(logits, targets).item() != pytest.approx(padded.item(), rel=1e-3)  # the padding mattered
    assert logits.grad[..., 65:].abs().max() == 0


@pytest.mark.parametrize("chunk", [5, 14, 64], ids=["uneven-chunks", "one-chunk", "chunk-past-the-end"])
@pytest.mark.parametrize("true_vocab", [None, 65], ids=["whole-vocab", "padded"])
def test_chunked_linear_cross_entropy_equals_the_plain_loss(chunk, true_vocab):
    """Same loss and gradients (fp32, rtol 1e-5) as the head's matmul followed by the plain loss."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 7, 16, generator=gen, requires_grad=True)
    weight = torch.randn(72, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 65, (2, 7), generator=gen)
    plain = cross_entropy(hidden @ weight.t(), targets, true_vocab)
    grads = torch.autograd.grad(3 * plain, (hidden, weight))
    fused = chunked_linear_cross_entropy(hidden, weight, targets, chunk, true_vocab)
    fused_grads = torch.autograd.grad(3 * fused, (hidden, weight))
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=0)
    for ours, theirs in zip(fused_grads, grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
