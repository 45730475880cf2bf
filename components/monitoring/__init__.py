"""Monitoring: has what serving sees drifted from what the champion was trained on?

- `drift_features`: the views (requests, items, events) as feature tables;
- `drift`: the detectors (the one module that imports alibi-detect);
- `drift_reference`: references fitted at training time, kept in the model artifact;
- `monitor`: the retraining decision (`retrain` with its reasons, or `ok`);
- `monitor_report`: the drift report (HTML); `monitor_metrics`: the check as Prometheus series.
"""
