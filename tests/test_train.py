"""`quailora train`: fine-tuning a QuAILoRA adapter with the transformers Trainer on CPU (4-bit NF4).

The loss goes down on a repeated text, events stream from the Trainer, the trained adapter
loads with peft on the bitsandbytes base, a cancelled run resumes from its checkpoint, and
every bad input (another base, another quantization, data without the needed fields) is one
clear error before any model is loaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import make_config, read_metadata
from safetensors.torch import load_file
from tiny_models import save_tiny

from quailora_core.cli import main
from quailora_core.config import RunConfig
from quailora_core.errors import InputError
from quailora_core.events import CancelToken, EvalResult, Finished, TrainStep
from quailora_core.train.examples import IGNORE_INDEX, encode_conversation
from quailora_core.train.processes import weights_digest
from quailora_core.train.trainer import TrainingCancelled, run_train

REPEATED = "The quick brown fox jumps over the lazy dog, and the dog sleeps in the sun. " * 40


@pytest.fixture(scope="module")
def adapter(demo_adapter) -> Path:
    return demo_adapter


def train_config(demo_model: Path, adapter: Path, tmp: Path, **train):
    text = tmp / "repeated.txt"
    text.write_text(REPEATED, encoding="utf-8")
    cfg = make_config(demo_model, adapter)
    t = cfg.train
    t.data, t.output = str(text), str(tmp / "out")
    t.seq_len, t.batch_size, t.learning_rate = 32, 2, 5e-3
    t.max_steps, t.eval_interval, t.save_interval, t.validation_fraction = 12, 4, 6, 0.25
    for key, value in train.items():
        setattr(t, key, value)
    return cfg


@pytest.fixture(scope="module")
def trained(demo_model, adapter, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    events = []
    result = run_train(train_config(demo_model, adapter, tmp), events.append)
    return result, events


def test_training_moves_the_adapter_and_events_stream(trained, adapter):
    """Mechanics only: how far 12 steps get is a property of the training run, which no test
    relies on (docs/benchmarks.md has the fine-tuning results)."""
    result, events = trained
    steps = [e for e in events if isinstance(e, TrainStep)]
    evals = [e for e in events if isinstance(e, EvalResult)]
    assert [e.step for e in steps] == list(range(1, 13))
    assert all(math.isfinite(e.loss) and e.total_steps == 12 and e.gpu_memory_gb is None for e in steps)
    assert all(e.tokens_per_second > 0 for e in steps)
    assert [e.step for e in evals] == [0, 4, 8, 12] and all(math.isfinite(e.loss) for e in evals)
    before = load_file(str(adapter / "adapter_model.safetensors"))
    after = load_file(str(Path(result.adapter_dir) / "adapter_model.safetensors"))
    assert sorted(after) == sorted(before)  # the same LoRA pairs, now trained
    assert all(not torch.equal(after[k], before[k]) for k in before), "an adapter tensor did not move"
    assert all(e.perplexity == pytest.approx(math.exp(e.loss)) for e in evals)
    assert isinstance(events[-1], Finished) and events[-1].output_dir == result.output_dir
    metrics = json.loads((Path(result.output_dir) / "metrics.json").read_text())
    assert metrics["global_step"] == 12 and metrics["eval_loss"] == pytest.approx(evals[-1].loss)
    assert metrics["first_eval_loss"] == pytest.approx(evals[0].loss) and metrics["optim"] == "adamw_torch"
    assert metrics["data"]["format"] == "text" and metrics["data"]["eval_examples"] >= 1
    assert metrics["processes"] == 1 and metrics["adapter_digests"] == [weights_digest(after)]


def test_trained_adapter_loads_with_peft_on_the_quantized_base(trained, adapter, demo_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from quailora_core.adapter.record import AdapterRecord

    result, _ = trained
    out = Path(result.output_dir)
    assert {p.name for p in out.iterdir()} == {
        "adapter", "checkpoint-6", "checkpoint-12", "logs", "metrics.json", "training_run.json"
    }
    trained_dir = Path(result.adapter_dir)
    assert {p.name for p in trained_dir.iterdir()} == {
        "adapter_config.json", "adapter_model.safetensors", "quailora.json", "README.md"
    }
    meta = read_metadata(trained_dir)
    assert meta["training"]["global_step"] == 12 and meta["quantization"] == read_metadata(adapter)["quantization"]
    recorded = AdapterRecord.from_dict(meta).quantization
    bnb, dtype = recorded.bnb(), recorded.dtype()
    base = AutoModelForCausalLM.from_pretrained(str(demo_model), quantization_config=bnb, dtype=dtype)
    model = PeftModel.from_pretrained(base, str(trained_dir))
    saved = load_file(str(trained_dir / "adapter_model.safetensors"))
    initial = load_file(str(adapter / "adapter_model.safetensors"))
    assert saved.keys() == initial.keys() and len(saved) == 56
    name = next(k for k in saved if "lora_B" in k)
    assert not torch.equal(saved[name], initial[name])  # training moved it
    layer = model.base_model.model.get_submodule(name.split(".lora_B")[0].removeprefix("base_model.model."))
    assert torch.equal(layer.lora_B["default"].weight.detach(), saved[name])
    assert type(layer.base_layer).__name__ == "Linear4bit"


def test_training_logs_to_tensorboard_by_default(trained):
    """The Trainer's TensorBoard integration writes event files in logs/, holding the loss of
    every logged step; the run record says where they are and how to view them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result, events = trained
    out = Path(result.output_dir)
    files = list((out / "logs").glob("events.out.tfevents.*"))
    assert files, sorted(p.name for p in (out / "logs").iterdir())
    acc = EventAccumulator(str(out / "logs"))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    logged = [e for e in events if isinstance(e, TrainStep)]
    assert [s.step for s in loss] == [e.step for e in logged]
    assert [s.value for s in loss] == pytest.approx([e.loss for e in logged], rel=1e-5)
    assert [s.step for s in acc.Scalars("eval/loss")] == [0, 4, 8, 12]
    logs = str(out / "logs")
    expected = {"tool": "tensorboard", "logs": logs, "view": f"tensorboard --logdir {logs}"}
    assert json.loads((out / "training_run.json").read_text())["tracking"] == expected
    assert result.tracking.to_dict() == expected and result.metrics["tracking"] == expected


def test_the_trained_adapters_card_describes_the_fine_tuning(trained):
    result, events = trained
    card = (Path(result.adapter_dir) / "README.md").read_text()
    last_eval = [e for e in events if isinstance(e, EvalResult)][-1]
    assert "# LoRA adapter fine-tuned from a QuAILoRA initialization" in card
    assert "QuAILoRA-initialized LoRA adapter" not in card  # no longer the untrained initialization
    assert "**12 steps**" in card and "repeated.txt" in card and "(text:" in card
    assert f"{last_eval.loss:.4f}" in card and f"{last_eval.perplexity:.4f}" in card
    assert "`tensorboard --logdir logs`" in card and str(Path(result.output_dir).parent) not in card
    assert "## The initialization it started from" in card and "relative calibrated error" in card
    assert "bnb_4bit_quant_type='nf4'" in card and "## Serving" in card  # what it needs and where it runs
    assert "is_trainable=False" in card


def test_tracking_none_writes_no_logs_and_an_uninstalled_tracker_is_refused(demo_model, adapter, tmp_path, capsys):
    from quailora_core.train.tracking import PACKAGES, is_installed

    cfg = train_config(demo_model, adapter, tmp_path, max_steps=2, save_interval=100, validation_fraction=0.0)
    cfg.save(tmp_path / "run.toml")
    assert main(["train", str(tmp_path / "run.toml"), "--tracking", "none"]) == 0
    out = Path(cfg.train.output)
    assert "no experiment tracking" in capsys.readouterr().out
    assert not (out / "logs").exists() and not list(out.rglob("events.out.tfevents.*"))
    assert json.loads((out / "training_run.json").read_text())["tracking"]["tool"] == "none"
    missing = next((name for name in PACKAGES if not is_installed(name)), None)
    if missing is None:
        pytest.skip("every tracker is installed here")
    run_file = tmp_path / "run.toml"
    refused(capsys, run_file, "--output", str(tmp_path / "out2"), "--tracking", missing,
            expect=f"pip install {PACKAGES[missing]}")  # fmt: skip
    refused(capsys, run_file, "--output", str(tmp_path / "out3"), "--tracking", "comet", expect="unknown tracking")


def test_cancel_saves_a_checkpoint_and_resume_continues_from_it(demo_model, adapter, tmp_path):
    cfg = train_config(demo_model, adapter, tmp_path, max_steps=5, save_interval=100, validation_fraction=0.0)
    cancel = CancelToken()

    def stop_at_3(event):
        if isinstance(event, TrainStep) and event.step == 3:
            cancel.cancel()

    with pytest.raises(TrainingCancelled, match="step 3"):
        run_train(cfg, stop_at_3, cancel)
    out = Path(cfg.train.output)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-3", "logs", "training_run.json"]  # no final adapter
    cfg.train.resume = True
    events = []
    result = run_train(cfg, events.append)
    assert [e.step for e in events if isinstance(e, TrainStep)] == [4, 5]
    state = json.loads((out / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["global_step"] == 5 and result.global_step == 5
    assert result.metrics["resumed_from"] == "checkpoint-3"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "logs"))  # the resumed run logs on in the same folder
    acc.Reload()
    assert [s.step for s in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5]


def test_prompt_response_labels_only_the_response(demo_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_model))
    prompt, response = "What is two plus two?", "It is four."
    ids, labels = encode_conversation(tok, [{"role": "user", "content": prompt},
                                            {"role": "assistant", "content": response}], 512)  # fmt: skip
    trained = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    assert tok.decode(trained[:-1]) == response and trained[-1] == tok.eos_token_id
    assert tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab == IGNORE_INDEX],
                      skip_special_tokens=True) == prompt + "\n\n"  # fmt: skip
    # with a chat template: only the assistant turns (as rendered by the template) are labelled
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye."}]  # fmt: skip
    ids, labels = encode_conversation(tok, chat, 512)
    assert tok.decode(ids) == tok.apply_chat_template(chat, tokenize=False)
    spans, current = [], []
    for i, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            current.append(i)
        elif current:
            spans.append(tok.decode(current))
            current = []
    spans.append(tok.decode(current)) if current else None
    assert spans == ["Hello.</s>", "Goodbye.</s>"]
    short_ids, short_labels = encode_conversation(tok, chat, 7)
    assert len(short_ids) == 7 and short_labels == labels[:7]


# ---------------------------------------------------------------------------- refusals
def refused(capsys, run_file: Path, *flags: str, expect: str) -> None:
    cfg = RunConfig.load(run_file)
    code = main(["train", str(run_file), *flags])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and expect.lower() in lines[0].lower(), err
    output = flags[flags.index("--output") + 1] if "--output" in flags else cfg.train.output
    assert not Path(output).exists()


@pytest.fixture
def run_file(demo_model, adapter, tmp_path) -> Path:
    cfg = train_config(demo_model, adapter, tmp_path)
    path = tmp_path / "run.toml"
    cfg.save(path)
    return path


def test_another_base_model_is_refused(capsys, run_file, tmp_path):
    other = save_tiny("llama", tmp_path / "tiny-llama")
    refused(capsys, run_file, "--model", str(other), expect="is not the base adapter")


def test_another_quantization_is_refused(capsys, run_file):
    cfg = RunConfig.load(run_file)
    cfg.quantization.bits = 8
    cfg.save(run_file)
    refused(capsys, run_file, expect="bits 8 vs 4")


def test_data_without_the_needed_fields_is_refused(capsys, run_file, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "Why?", "answer": "Because."}\n', encoding="utf-8")
    refused(capsys, run_file, "--data", str(data), expect='no "prompt" and "response" fields')
    refused(capsys, run_file, "--data", str(data), "--data-format", "prompt_response", expect="'question'")
    data.write_text('{"prompt": "Why?", "response": 3}\n', encoding="utf-8")
    refused(capsys, run_file, "--data", str(data), expect="'response' of row 1")
    refused(capsys, run_file, "--data", str(tmp_path / "missing.jsonl"), expect="does not exist")


def test_busy_output_and_nothing_to_resume_are_refused(capsys, run_file, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = main(["train", str(run_file), "--output", str(out)])
    assert code == 2 and "--resume" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    code = main(["train", str(run_file), "--output", str(out), "--resume"])
    assert code == 2 and "nothing to resume" in capsys.readouterr().err.lower()


def test_bad_settings_are_input_errors(demo_model, adapter, tmp_path):
    for changes in ({"max_steps": 0}, {"learning_rate": -1.0}, {"validation_fraction": 1.0}, {"seq_len": 4}):
        with pytest.raises(InputError):
            run_train(train_config(demo_model, adapter, tmp_path, **changes))
    assert not (tmp_path / "out").exists()


def test_training_data_format_is_detected_from_the_fields(tmp_path):
    from quailora_core.sources.training_data import load_training_data

    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    (tmp_path / "chat.jsonl").write_text(json.dumps(chat) + "\n", encoding="utf-8")
    (tmp_path / "pairs.csv").write_text("prompt,response\nWhy?,Because.\n", encoding="utf-8")
    (tmp_path / "docs.jsonl").write_text('{"text": "A document."}\n', encoding="utf-8")
    (tmp_path / "notes.txt").write_text("One.\n\nTwo.\n", encoding="utf-8")
    found = {name: load_training_data(str(tmp_path / name)) for name in ("chat.jsonl", "pairs.csv", "docs.jsonl",
                                                                          "notes.txt")}  # fmt: skip
    assert {n: (d.kind, d.fields, len(d)) for n, d in found.items()} == {
        "chat.jsonl": ("prompt_response", "messages", 1),
        "pairs.csv": ("prompt_response", "prompt/response", 1),
        "docs.jsonl": ("text", "text", 1),
        "notes.txt": ("text", "text", 2),
    }
    assert found["pairs.csv"].conversations == [[{"role": "user", "content": "Why?"},
                                                 {"role": "assistant", "content": "Because."}]]  # fmt: skip
    assert load_training_data("demo").kind == "text"
    with pytest.raises(InputError, match="plain text, not prompt/response"):
        load_training_data("demo", "prompt_response")
    with pytest.raises(InputError, match='no "prompt" and "response"'):
        load_training_data(str(tmp_path / "notes.txt"), "prompt_response")
    bad = {"messages": [{"role": "user", "content": "Hi"}]}
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="no assistant message"):
        load_training_data(str(tmp_path / "bad.jsonl"))


def test_wandb_without_a_key_runs_offline_and_trackers_write_under_logs(tmp_path, monkeypatch):
    """W&B online without an API key would stop and ask for a login: it runs offline instead.
    Each tracker is pointed at the run's logs/ unless the user's environment says otherwise,
    and the environment is as it was after the run."""
    import os

    from quailora_core.train.tracking import tracker_environment, tracking_info

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: never logged in to W&B
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "MLFLOW_TRACKING_URI", "TENSORBOARD_LOGGING_DIR"):
        monkeypatch.delenv(key, raising=False)
    logs = tmp_path / "out" / "logs"
    with tracker_environment("wandb", logs):
        assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_DIR"] == str(logs)
    assert "WANDB_MODE" not in os.environ and "WANDB_DIR" not in os.environ
    assert tracking_info("wandb", logs).view == f"wandb sync {logs / 'wandb' / 'offline-run-*'}"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password key\n")
    (tmp_path / ".netrc").chmod(0o600)
    with tracker_environment("wandb", logs):  # logged in: online, as the user set it up
        assert "WANDB_MODE" not in os.environ
    with tracker_environment("tensorboard", logs):
        assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(logs)
    with tracker_environment("mlflow", logs):
        assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{logs.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")  # the user's server wins
    with tracker_environment("mlflow", logs):
        assert os.environ["MLFLOW_TRACKING_URI"] == "http://tracking:5000"
    info = tracking_info("mlflow", logs)
    assert info.logs is None and info.view == "mlflow ui --backend-store-uri http://tracking:5000"


def test_a_trained_adapter_missing_tensors_or_holding_nan_is_refused(adapter, tmp_path):
    """What the trainer checks on the written file before the adapter is moved into place: the
    tensors of the adapter it started from, all finite (a sharded run's gathered state dict
    that lost its LoRA keys would otherwise save an empty adapter without a word)."""
    from peft.utils import SAFETENSORS_WEIGHTS_NAME
    from safetensors.torch import save_file

    from quailora_core.errors import QuailoraError
    from quailora_core.train.trainer import _plain_name, check_trained_adapter

    weights = load_file(str(adapter / SAFETENSORS_WEIGHTS_NAME))
    first = sorted(weights)[0]

    def written(tensors) -> Path:
        folder = tmp_path / f"trained-{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        save_file(tensors, str(folder / SAFETENSORS_WEIGHTS_NAME))
        return folder

    check_trained_adapter(written({k: v + 0.5 for k, v in weights.items()}), adapter)  # trained: other values
    with pytest.raises(QuailoraError, match=rf"does not hold the {len(weights)} LoRA tensors.*missing 1"):
        check_trained_adapter(written({k: v for k, v in weights.items() if k != first}), adapter)
    with pytest.raises(QuailoraError, match=r"missing .*\(e\.g\. base_model"):
        check_trained_adapter(written({}), adapter)  # what peft saves from names it does not recognize
    with pytest.raises(QuailoraError, match="other shape 1"):
        check_trained_adapter(written({**weights, first: weights[first][:1]}), adapter)  # a shard, not the tensor
    with pytest.raises(QuailoraError, match="diverged: 1 of"):
        check_trained_adapter(written({**weights, first: weights[first] * float("nan")}), adapter)
    wrapped = "base_model.model._fsdp_wrapped_module.model.layers.0._fsdp_wrapped_module.self_attn.q_proj.lora_A.weight"
    assert _plain_name(wrapped) == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
