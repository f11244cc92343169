"""Transformers folders: a tokenizer is required, a sequence classifier is served as a text
classifier, and another task head is not silently dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from manager.cli import main
from manager.errors import ArtifactError
from manager.modelconfig import config_parameters, read_config, tensors_from_config
from manager.publish import PublishOptions, publish


def hf_folder(
    path: Path,
    *,
    tokenizer: str | None = "vocab.txt",
    architectures: list[str] | None = None,
    **settings: object,
) -> Path:
    """A folder that inspects as transformers (its weights are not loaded at publish);
    ``settings`` go into its config.json."""
    path.mkdir(parents=True)
    config: dict[str, object] = {"model_type": "bert", "hidden_size": 8, **settings}
    if architectures is not None:
        config["architectures"] = architectures
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes(b"")
    (path / "tokenizer_config.json").write_text("{}")
    if tokenizer:
        (path / tokenizer).write_text("[PAD]\n[UNK]\n")
    return path


def test_a_folder_without_a_tokenizer_is_refused(repo, tmp_path):
    folder = hf_folder(tmp_path / "hf", tokenizer=None)
    with pytest.raises(ArtifactError, match=r"has no tokenizer .* every word would be \[UNK\]"):
        publish(repo, "emb", folder)
    assert repo.models() == []


@pytest.mark.parametrize("tokenizer", ["tokenizer.json", "vocab.txt", "vocab.json", "spiece.model"])
def test_any_tokenizer_vocabulary_is_enough(repo, tmp_path, tokenizer):
    result = publish(repo, "emb", hf_folder(tmp_path / "hf", tokenizer=tokenizer))
    assert result.format == "transformers" and result.notices == []


@pytest.mark.parametrize(
    "arch",
    ["RobertaForTokenClassification", "BertForQuestionAnswering", "BertForMultipleChoice"],
)
def test_a_task_head_other_than_a_classifier_is_refused_unless_asked_to_serve_embeddings(
    repo, tmp_path, arch
):
    folder = hf_folder(tmp_path / "hf", architectures=[arch])
    with pytest.raises(
        ArtifactError,
        match=f"is a {arch}: .*sequence classifiers .* as text classifiers.* --as-embedder",
    ):
        publish(repo, "clf", folder)
    assert repo.models() == []
    result = publish(repo, "clf", folder, PublishOptions(as_embedder=True))
    assert result.notices == [
        f"{arch} is served as a text embedder of its base model (--as-embedder): the head is "
        "not used"
    ]


def signature(result) -> tuple[list[str], list[str]]:
    """The published config's inputs and outputs as NAME:DTYPE:DIMS, read back from disk."""
    config = read_config(result.path.parent / "config.pbtxt")
    return (
        [f"{t.name}:{t.dtype}:{list(t.dims)}" for t in tensors_from_config(config.input)],
        [f"{t.name}:{t.dtype}:{list(t.dims)}" for t in tensors_from_config(config.output)],
    )


def test_a_sequence_classifier_is_published_as_a_text_classifier(repo, tmp_path):
    folder = hf_folder(
        tmp_path / "hf",
        architectures=["BertForSequenceClassification"],
        id2label={"0": "negative", "1": "neutral", "2": "positive"},
    )
    result = publish(repo, "sentiment", folder)
    assert signature(result) == (["TEXT:STRING:[1]"], ["LOGITS:FP32:[3]", "LABEL:STRING:[1]"])
    config = read_config(result.path.parent / "config.pbtxt")
    assert config.backend == "python" and config.max_batch_size == 64
    params = config_parameters(config)
    assert params["tritonctl.task"] == "text-classification"
    assert params["tritonctl.runner"] == "transformers"
    assert (result.path / "model.py").is_file() and (result.path / "hf" / "config.json").is_file()
    assert result.notices == [
        "BertForSequenceClassification is served as a text classifier: LOGITS (3 per sentence) "
        "and LABEL (the id2label name of the highest logit); --as-embedder serves its base "
        "model's embeddings instead"
    ]


@pytest.mark.parametrize(
    ("settings", "labels"),
    [({}, 2), ({"num_labels": 4}, 4), ({"problem_type": "single_label_classification"}, 2)],
)
def test_a_classifier_has_as_many_logits_as_transformers_gives_it_labels(
    repo, tmp_path, settings, labels
):
    folder = hf_folder(tmp_path / "hf", architectures=["BertForSequenceClassification"], **settings)
    _, outputs = signature(publish(repo, "clf", folder))
    assert outputs == [f"LOGITS:FP32:[{labels}]", "LABEL:STRING:[1]"]


@pytest.mark.parametrize(
    ("settings", "why"),
    [
        (
            {"problem_type": "multi_label_classification", "id2label": {"0": "a", "1": "b"}},
            "a multi-label classifier (apply a sigmoid to each logit)",
        ),
        ({"problem_type": "regression", "num_labels": 1}, "a regression head"),
        ({"num_labels": 1}, "a regression head"),
    ],
)
def test_a_classifier_without_a_single_predicted_label_is_served_with_its_logits_only(
    repo, tmp_path, settings, why
):
    folder = hf_folder(tmp_path / "hf", architectures=["BertForSequenceClassification"], **settings)
    result = publish(repo, "clf", folder)
    labels = len(settings.get("id2label", {})) or settings["num_labels"]
    assert signature(result)[1] == [f"LOGITS:FP32:[{labels}]"]
    assert result.notices == [
        f"BertForSequenceClassification is {why}: served with LOGITS ({labels} per sentence) "
        "only, no LABEL, as it has no single predicted label"
    ]


@pytest.mark.parametrize(
    ("settings", "match"),
    [({"id2label": ["a", "b"]}, "id2label must be an object"), ({"num_labels": 0}, "0 labels")],
)
def test_a_classifier_whose_labels_cannot_be_counted_is_refused(repo, tmp_path, settings, match):
    folder = hf_folder(tmp_path / "hf", architectures=["BertForSequenceClassification"], **settings)
    with pytest.raises(ArtifactError, match=f"config.json: .*{match}"):
        publish(repo, "clf", folder)
    assert repo.models() == []


def test_a_classifier_asked_to_serve_embeddings_is_published_as_an_embedder(repo, tmp_path):
    folder = hf_folder(tmp_path / "hf", architectures=["BertForSequenceClassification"])
    result = publish(repo, "emb", folder, PublishOptions(as_embedder=True))
    assert signature(result) == (["TEXT:STRING:[1]"], ["EMBEDDING:FP32:[8]"])
    config = read_config(result.path.parent / "config.pbtxt")
    assert config_parameters(config)["tritonctl.task"] == "feature-extraction"
    assert result.notices == [
        "BertForSequenceClassification is served as a text embedder of its base model "
        "(--as-embedder): the head is not used"
    ]


def test_a_language_model_head_is_published_with_a_notice(repo, tmp_path):
    folder = hf_folder(tmp_path / "hf", architectures=["BertForMaskedLM"])
    result = publish(repo, "mlm", folder)
    assert (
        len(result.notices) == 1
        and "BertForMaskedLM is served as a text embedder" in (result.notices[0])
    )


def test_a_sentence_transformers_folder_is_an_embedder_whatever_its_architecture(repo, tmp_path):
    folder = hf_folder(tmp_path / "hf", architectures=["BertForSequenceClassification"])
    (folder / "modules.json").write_text("[]")
    assert publish(repo, "st", folder).notices == []


def test_cli_publishes_a_classifier_with_a_note_and_refuses_a_token_classifier_in_one_line(
    tmp_path,
):
    repo_args = ["--repo", str(tmp_path / "repo"), "publish"]
    tagger = hf_folder(tmp_path / "tagger", architectures=["BertForTokenClassification"])
    refused = CliRunner().invoke(main, [*repo_args, "tagger", str(tagger)])
    assert refused.exit_code != 0 and "--as-embedder" in refused.stderr
    assert "Traceback" not in refused.output
    classifier = hf_folder(tmp_path / "clf", architectures=["BertForSequenceClassification"])
    ok = CliRunner().invoke(main, [*repo_args, "clf", str(classifier)])
    assert ok.exit_code == 0, ok.output
    assert "note BertForSequenceClassification is served as a text classifier" in ok.stderr
    embedder = CliRunner().invoke(
        main, [*repo_args, "emb", str(classifier), "--as-embedder", "--json"]
    )
    notice = json.loads(embedder.stdout)["notices"][0]
    assert notice.startswith("BertForSequenceClassification is served as a text embedder")
    help_text = " ".join(CliRunner().invoke(main, ["publish", "--help"]).output.split())
    assert "sequence classifier (e.g. BertForSequenceClassification) is served as a text" in (
        help_text
    )


def sentence_transformers_folder(path: Path, **pooling: bool) -> Path:
    folder = hf_folder(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    config = {
        "pooling_mode_mean_tokens": False,
        **{f"pooling_mode_{k}": v for k, v in pooling.items()},
    }
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("mode", ["mean_tokens", "cls_token", "max_tokens"])
def test_a_sentence_transformers_pooling_the_runner_reproduces_is_published(repo, tmp_path, mode):
    result = publish(repo, "st", sentence_transformers_folder(tmp_path / "hf", **{mode: True}))
    assert (result.path / "hf" / "1_Pooling" / "config.json").is_file()


@pytest.mark.parametrize(
    "pooling",
    [{"weightedmean_tokens": True}, {"lasttoken": True}, {"cls_token": True, "max_tokens": True}],
)
def test_a_sentence_transformers_pooling_the_runner_cannot_serve_is_refused_at_publish(
    repo, tmp_path, pooling
):
    folder = sentence_transformers_folder(tmp_path / "hf", **pooling)
    with pytest.raises(
        ArtifactError,
        match=r"cannot be served by tritonctl's transformers runner: .*1_Pooling.config.json: "
        r"pooling \[.*\] is not supported",
    ):
        publish(repo, "st", folder)
    assert repo.models() == []


def test_a_sentence_transformers_module_the_runner_cannot_serve_is_refused_at_publish(
    repo, tmp_path
):
    folder = sentence_transformers_folder(tmp_path / "hf", mean_tokens=True)
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    modules = json.loads((folder / "modules.json").read_text())
    (folder / "modules.json").write_text(json.dumps([*modules, dense]))
    with pytest.raises(ArtifactError, match="module 'Dense' is not supported"):
        publish(repo, "st", folder)


@pytest.mark.parametrize(
    ("file", "text", "match"),
    [
        ("modules.json", "{not json", "not valid JSON|Expecting"),
        ("modules.json", '{"0": "Pooling"}', "expected a list of modules"),
        ("sentence_bert_config.json", "{not json", "not valid JSON"),
        ("sentence_bert_config.json", "[1]", "expected an object of settings"),
    ],
)
def test_malformed_sentence_transformers_metadata_is_an_artifact_error(
    repo, tmp_path, file, text, match
):
    folder = hf_folder(tmp_path / "hf")
    if file != "modules.json":
        (folder / "modules.json").write_text("[]")
    (folder / file).write_text(text)
    with pytest.raises(ArtifactError, match=match):
        publish(repo, "emb", folder)
    assert repo.models() == []
