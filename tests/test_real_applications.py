"""keras.applications, as a researcher brings them: six CNN families through export(formats="all") and verify.

The checks are in tests/real_checks.py; the other half of the zoo (keras_hub, attention, masking, quantization) is
in tests/test_real_hub_and_quantized.py, so that the two halves run in the two test processes side by side.
"""
import pytest
import real_zoo
from real_checks import (  # noqa: F401  (the shared tests, collected here for this half of the zoo)
    export_and_verify,
    test_exported_with_every_format_verified_or_skipped_for_its_reason,
    test_inspect_and_cli_predict,
    test_load_run_matches_the_model,
    test_savedmodel_keeps_input_names_and_dtypes,
)


@pytest.fixture(scope="module", params=[n for n in real_zoo.names() if n in real_zoo.APPLICATIONS])
def real(request, tmp_path_factory):
    return export_and_verify(request.param, tmp_path_factory)
