import time, numpy as np, pytest
import tritonclient.http as th
from tests.integration.helpers import write_python_model, FAILING_MODEL_PY

@pytest.mark.integration
def test_smoke(triton):
    write_python_model(triton.repo, "dbl")
    write_python_model(triton.repo, "bad", FAILING_MODEL_PY)
    c = th.InferenceServerClient(triton.http_url.removeprefix("http://"))
    t = time.time(); c.load_model("dbl"); print("load", time.time() - t)
    i = th.InferInput("INPUT0", [3], "FP32"); i.set_data_from_numpy(np.arange(3, dtype=np.float32))
    print(c.infer("dbl", [i]).as_numpy("OUTPUT0"))
    try:
        c.load_model("bad")
    except Exception as e:
        print("ERR", repr(e))
    print(c.get_model_repository_index())
    c.unload_model("dbl"); print(c.get_model_repository_index())
    print(c.get_inference_statistics("dbl"))
    try:
        c.load_model("nope")
    except Exception as e:
        print("ERR", repr(e), e.status(), e.message())
    import urllib.request
    txt = urllib.request.urlopen(triton.metrics_url + "/metrics").read().decode()
    print([l for l in txt.splitlines() if "memory" in l])
