"""The bad-input corpus (benchmarks/bench_bad_inputs.py): every bad input survives, no good record is lost."""
from benchmarks.bench_bad_inputs import run_corpus


def test_every_bad_input_is_a_specific_dead_letter_and_no_good_record_is_lost(tmp_path):
    result = run_corpus(str(tmp_path), users=30, hours=1, bomb_mib=8)
    assert result["failures"] == []
    assert result["unexpected_dead_letters"] == []
    assert result["tried"] == result["survived"] >= 40
    assert result["clean_dead_letters"] == 0
    assert result["good_records_lost"] == 0 and result["extra"] == {"follows": 0, "alerts": 0, "marketing": 0}
