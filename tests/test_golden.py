"""FADE, FiLo and ALFA outputs (detect, segment, eval; 0- and 1-shot) equal the stored golden ones to 1e-6."""

import numpy as np

import golden_cases


def test_outputs_equal_the_golden_outputs(tmp_path):
    expected_records, expected_maps = golden_cases.load()
    records, maps = golden_cases.compute(tmp_path)
    assert sorted(records) == sorted(expected_records)
    problems = [d for case in expected_records for d in golden_cases.differences(expected_records[case], records[case], case)]
    assert not problems, "\n".join(problems[:20])
    assert sorted(maps) == sorted(expected_maps)
    for name, expected in expected_maps.items():
        assert maps[name].shape == expected.shape, name
        np.testing.assert_allclose(maps[name], expected, rtol=0, atol=golden_cases.TOLERANCE, err_msg=name)
