"""The kind end-to-end test's parts that need no cluster (tested in tests/unit/test_e2e_kind.py):
platform versions and install commands, the stage runner and waiting, checks on objects and
answers. tools/e2e_kind.py drives them against a real cluster."""
