"""Training for train.py, train_lora.py and train_grpo.py (docs/architecture.md): ``run`` is the harness all three
use alike, ``sft`` the supervised recipe's parts, ``callbacks``, ``tracking`` (SwanLab), ``results``, ``features``,
``loss``, ``checkpoints``, ``distributed``. Import the module you need."""
