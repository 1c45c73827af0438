"""Downstream fine-tuning: segmentation networks, strict encoder transfer, training, inference.

- `networks.build_segmentation_network(backbone, num_classes, settings, encoder_config)`
- `transfer.load_encoder_checkpoint(net, backbone, path, encoder_config)` (strict),
  `transfer.save_encoder_checkpoint(path, encoder_state, encoder_config, method, ...)`
- `segmentation.finetune(...)`: one fold -> log.csv, model.pt, train_summary.json
- `inference.evaluate(...)`: sliding-window prediction, scoring on the original grid -> metrics.json
"""

# A fine-tuned fold's model file (segmentation and classification alike). Defined here, free of
# torch, because the workflow derives model paths from it while it builds the DAG.
MODEL_FILE = "model.pt"


def model_settings_hash(ckpt, data_dir) -> str:
    """What produced a model's predictions: its run's settings, encoder, init, seed and data cache.
    Here, free of torch, because the settings tables read it for every model (`alice table row`)."""
    from pathlib import Path

    from alice.io import settings_hash
    from alice.io import read_json

    manifest = Path(data_dir) / "manifest.json"
    preprocessing = read_json(manifest).get("settings_hash") if manifest.is_file() else None
    return settings_hash({k: ckpt.get(k) for k in (
        "settings", "encoder_config", "init", "seed", "dataset")} | {"preprocessing": preprocessing})
