"""A Hugging Face model card (README.md with model-index metadata) from a training record and an evaluation."""

from __future__ import annotations

from pathlib import Path


def write_card(folder: str | Path, evaluation: dict, record: dict | None = None, dataset: str = "imagefolder") -> Path:
    """Write folder/README.md: YAML metadata the hub reads (base model, metrics) and the report as tables."""
    from huggingface_hub import ModelCard, ModelCardData, EvalResult

    record = record or {}
    name = Path(folder).resolve().name
    metrics = [("accuracy", evaluation["accuracy"])] + ([("top5_accuracy", evaluation["top5_accuracy"])]
                                                        if "top5_accuracy" in evaluation else [])
    data = ModelCardData(
        model_name=name, library_name="transformers", pipeline_tag="image-classification",
        base_model=record.get("base_name") or None,
        eval_results=[EvalResult(task_type="image-classification", dataset_type="imagefolder", dataset_name=dataset,
                                 metric_type=metric, metric_value=value) for metric, value in metrics])
    rows = "\n".join(f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
                     for label, m in evaluation["per_class"].items())
    labels = evaluation["labels"]
    matrix = "\n".join(f"| **{labels[i]}** | " + " | ".join(str(v) for v in row) + " |"
                       for i, row in enumerate(evaluation["confusion_matrix"]))
    params = record.get("params", {})
    body = f"""
# {name}

Image classifier{f" fine-tuned from `{record['base_name']}`" if record.get("base_name") else ""}{f" ({params.get('mode')})" if params.get("mode") else ""}.

## Evaluation on {dataset} ({evaluation['count']} images)

- accuracy: {evaluation['accuracy']:.4f}
{f"- top-5 accuracy: {evaluation['top5_accuracy']:.4f}" if "top5_accuracy" in evaluation else ""}
- expected calibration error (ECE, {15} bins): {evaluation['ece']:.4f}

| class | precision | recall | f1 | support |
|---|---|---|---|---|
{rows}

Confusion matrix (rows true, columns predicted):

| | {" | ".join(labels)} |
|---|{"---|" * len(labels)}
{matrix}
"""
    if record.get("data_fingerprint"):
        body += f"\n## Training\n\n- data fingerprint: `{record['data_fingerprint']}`\n- parameters: `{params}`\n"
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    path = Path(folder) / "README.md"
    card.save(path)
    return path
