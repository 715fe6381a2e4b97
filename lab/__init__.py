"""What the lab's notebooks share besides BitFit itself (``bitfit_utils``), one module per concern.

- ``lab.setup``: the notebooks' first cell: find the project, install what the kernel lacks.
- ``lab.notebook_sync``: the generated setup cells and Colab badges of the notebooks and README.
- ``lab.hub``: is the Hugging Face Hub there; offline mode; prefetch.
- ``lab.tasks``: the GLUE tasks (MRPC, SST-2, CoLA, RTE), one ``TaskSpec`` entry each.
- ``lab.data``: a task's data (MRPC by default) from a local folder or the Hub; tokenizing; the lab's splits.
- ``lab.models``: loading the model (Hub or the offline MiniLM); device; prediction.
- ``lab.training``: the Trainer set up the lab's way; metrics; the stopping rule's callbacks; history.
- ``lab.timing``: how long a notebook's trainings will take here, told before they start.
- ``lab.analysis``: training curves, bias changes, sizes and latency.
- ``lab.packs``: bias packs: save, read and load the trained biases and head of one task.
- ``lab.serving``: one base serving several tasks' packs (switching, one mixed forward pass).
- ``lab.task_packs``: another task's pack, found ready or trained on a subsample; 03's server.
- ``lab.consistency``: do the same bias groups move most on every task.
- ``lab.methods``: the methods compared with BitFit: frozen and full baselines, LoRA, BEFT (peft);
  ``lab.registry``: the one table of methods (set-up, checkpoint, grid) everything else reads.
- ``lab.selection``: the one rule that picks an epoch and a rate (validation MCC, ties, patience).
- ``lab.heads``: what the classifier reads ([CLS] through the pooler, or the masked token mean).
- ``lab.handout``: the handout's snippets, run as written, for 02's optional section.
- ``lab.recipe``: what 02 trains (the study's recipe or the defaults; QUICK, DEMO) and how long it takes.
- ``lab.study``: the study as 02 shows it: its headline, this run among its seeds.
- ``lab.families``: where the biases sit in architectures other than BERT's (registered with
  ``bitfit_utils`` when imported; the modules that handle models import it).
- ``lab.checks``: the self-checks of the exercises; ``lab.verdicts``: the verdict they print and return.
- ``lab.rebuild``: what 02's exercises need from its sections 0-1, rebuilt after a kernel restart.

Importing ``lab`` imports nothing else (``lab.setup`` runs before torch is installed).
"""
