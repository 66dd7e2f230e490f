from services.generate_stubs import stale_files


def test_checked_in_stubs_match_the_protos():
    assert stale_files() == [], "stubs are stale: run `make stubs` (python -m services.generate_stubs)"
