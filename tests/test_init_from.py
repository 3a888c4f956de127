"""`checkpoint.init_from`: a Hugging Face GPT-2 directory starts a run in any layout, from exactly its weights.

The source is a tied pp_1f1b(2) run of nano on shakespeare_char (65 characters), exported: its
export must be GPT2LMHeadModel with tied weights and our logits. Each layout that starts from it
must see, at step 0, the exported model's loss on the same batch (the first step's loss is taken
before any update). The tp rows pad the vocabulary to 72, so they also check that the padding is
left out of the loss, on whole logits (tp) and on vocab-sharded ones (tp_sp's loss parallelism).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, launch, read_metrics
from hydra import compose, initialize_config_dir

from nanodist.config import register_configs
from nanodist.tools.export import main as export_main
from nanodist.train.checkpoint import load_model
from nanodist.train.loader import BatchLayout, TokenLoader

transformers = pytest.importorskip("transformers")

MODEL = ["model=nano", "data=shakespeare_char", "model.dropout=0.0", "train.sample_tokens=0", "train.batch_size=4",
         "train.log_interval=1", "train.eval_interval=0", "optim.warmup_steps=1", "optim.lr=3e-3"]
LAYOUTS = [
    ("fsdp(2)", ["parallel=fsdp", "mesh.dp_shard=2"]),
    ("pp_1f1b(2)", ["parallel=pp_1f1b", "mesh.pp=2"]),
    ("tp(2), vocab padded to 72", ["parallel=tp", "mesh.tp=2", "model.pad_vocab_to_multiple=8"]),
    ("tp_sp(2) with loss parallelism, padded", ["parallel=tp_sp", "mesh.tp=2", "model.pad_vocab_to_multiple=8"]),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tied model trained 3 steps under pp_1f1b(2), and its Hugging Face export."""
    run = tmp_path_factory.mktemp("pp_run")
    launch(run, *MODEL, "parallel=pp_1f1b", "mesh.pp=2", "train.max_steps=3", timeout=600)
    out = run / "hf"
    export_main([f"checkpoint={run}", f"out={out}"])
    return run, out


def first_batch(overrides: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 0's whole global batch, as the Trainer's loader cuts it (every dp rank's rows together)."""
    register_configs()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    t = cfg.train
    loader = TokenLoader(cfg.data, "train", cfg.model.block_size, BatchLayout(t.batch_size, 1, 1, 0), t.seed, 65)
    return loader.micro_batches(0)[0]


@pytest.mark.multiprocess
def test_pipeline_export_is_tied_and_gives_our_logits(exported):
    run, out = exported
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    assert hf.config.tie_word_embeddings and hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    ours, _ = load_model(run)
    tokens = torch.randint(0, 65, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, ours.eval()(tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.multiprocess
@pytest.mark.parametrize("overrides", [pytest.param(o, id=name) for name, o in LAYOUTS])
def test_init_from_export_starts_at_its_loss(exported, overrides, tmp_path):
    _, out = exported
    launch(tmp_path, *MODEL, *overrides, "train.max_steps=1", f"checkpoint.init_from={out}", timeout=600)
    x, y = first_batch(MODEL)
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    with torch.no_grad():
        expected = F.cross_entropy(hf(x).logits.flatten(0, 1), y.flatten()).item()
    assert read_metrics(tmp_path)[0]["loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.multiprocess
def test_init_from_another_shape_is_refused_before_any_rank_starts(exported, tmp_path):
    _, out = exported
    result = launch(tmp_path, *MODEL, "model.n_layer=3", f"checkpoint.init_from={out}", check=False)
    assert result.returncode == 2
    assert "holds a different model, n_layer=4 (this run: 3)" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "rank0.log").exists()


def test_hub_name_without_network_is_one_sentence(tmp_path):
    result = launch(tmp_path, *MODEL, "checkpoint.init_from=gpt2", check=False,
                    env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")})
    assert result.returncode == 2
    assert "checkpoint.init_from=gpt2 is not a local directory and could not be fetched" in result.stderr
    assert "Traceback" not in result.stderr
