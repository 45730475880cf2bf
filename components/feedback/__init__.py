"""Feedback: what users did with the recommendations, and what serving observed.

- `feedback_events`: the contract of one event (`normalize_event`, `InvalidEvent`), checked
  for every way in;
- `feedback_store`: `FeedbackStore`, events and impressions in SQLite or PostgreSQL;
- `observations`: request logs, event files and the store read back as tables, for training
  (`events_to_interactions`), monitoring and experiments.

The lowest stage package: serving, data ingestion and monitoring all read it.
"""
