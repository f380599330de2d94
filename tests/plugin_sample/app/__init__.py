"""A small application that dbkeel's pytest plugin is tested on (tests/test_testing_plugin.py)."""
