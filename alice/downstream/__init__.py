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
