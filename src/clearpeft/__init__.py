"""clearpeft: parameter-efficient fine-tuning on noisy labels with CleaR (Clean Routing).

    import clearpeft
    run = clearpeft.fit(texts, labels, peft="lora", routing="clean", noise="clean", epochs=10, out="runs/x")
    run.predict(["a great movie"]); run.predict_proba([...]); run.label_issues()
    run = clearpeft.load_run("runs/x")

See clearpeft.api. The modules below it: data -> noise -> peft -> routing, clear -> train -> study -> cli.
"""

__version__ = "0.1.0"

from .api import Run, fit, load_run  # noqa: E402  (light: torch loads on the first fit or prediction)
from .errors import UserError  # noqa: E402

__all__ = ["Run", "UserError", "__version__", "fit", "load_run"]
