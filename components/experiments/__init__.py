"""Experiments: champion against challenger, online.

- `experiment`: the statistics (always-valid mixture SPRT, sample sizes, guardrails) and the
  decision (`analyze`: promote, rollback or continue; A/B or interleaving);
- `interleaving`: team-draft interleaving and its win-rate test;
- `assignment`: who sees which model (sticky, by a hash of the user id);
- `simulation`: simulated users whose clicks come from their real future;
- `serving_health`: latency and errors per model version, the guardrails' inputs.
"""
