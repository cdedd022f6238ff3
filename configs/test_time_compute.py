"""Test-time compute scaling (Snell et al. 2024) on the synthetic arithmetic task: a tiny policy, Monte-Carlo soft
labels, a PRM, search strategies x budgets, the compute-optimal selection and its plots.

  python launch.py --config configs/test_time_compute.py:variant=smoke --workdir runs/ttc --mode train
  python launch.py --config configs/test_time_compute.py:variant=smoke --workdir runs/ttc --mode label
  python launch.py --config configs/test_time_compute.py:variant=smoke --workdir runs/ttc --mode train_prm
  python launch.py --config configs/test_time_compute.py:variant=smoke --workdir runs/ttc --mode search
  python launch.py --config configs/test_time_compute.py:variant=smoke --workdir runs/ttc --mode select
  python launch.py --config configs/test_time_compute.py:variant=smoke --workdir runs/ttc --mode plots

The top-level trainer keys (total_steps, batch_size, optim) train the policy (--mode train); prm.* overrides them
for --mode train_prm (the spec's AdamW lr 3e-5, batch 128, betas (0.9, 0.95) by default).
"""
import ml_collections

from mmjax.train.config import base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant='default')
  if arg.variant not in ('default', 'smoke'):
    raise ValueError(f"variant must be 'default' or 'smoke', got {arg.variant!r}")
  c = base_config()
  c.experiment = 'experiments.test_time_compute.experiment'
  c.variant = arg.variant
  c.progress_bar = False
  c.async_checkpointing = False

  c.data = ml_collections.ConfigDict()
  c.data.min_len = 3  # chain lengths (digits) of the problems: the difficulty
  c.data.max_len = 6
  c.data.train_questions = 20000  # policy SFT
  c.data.label_questions = 2000  # soft labels for the PRM (10% of them held out for early stopping)
  c.data.eval_questions = 500  # search and selection
  c.data.seed = 0

  c.model = ml_collections.ConfigDict()  # the policy and the PRM (initialised from the policy): a Qwen2 decoder
  c.model.hidden_size = 64
  c.model.intermediate_size = 128
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.num_kv_heads = 2

  c.labels = ml_collections.ConfigDict()
  c.labels.samples = 16  # N solutions per question
  c.labels.rollouts = 16  # M rollouts per step
  c.labels.temperature = 1.0
  c.labels.chunk = 64  # questions labelled per batched call

  c.prm = ml_collections.ConfigDict()
  c.prm.total_steps = 3000
  c.prm.batch_size = 128
  c.prm.lr = 3e-5
  c.prm.b1 = 0.9
  c.prm.b2 = 0.95
  c.prm.warmup_steps = 100
  c.prm.eval_every = 100  # validation BCE on the held-out questions; the best step's params are kept
  c.prm.val_fraction = 0.1

  c.search = ml_collections.ConfigDict()
  c.search.budgets = (4, 16, 64, 256)
  c.search.strategies = ('best_of_n', 'beam_m4_k0', 'beam_msqrt_k0', 'beam_m4_k3', 'beam_msqrt_k1', 'dvts_m4_k0')
  c.search.temperature = 1.0
  c.search.chunk = 16  # questions per resumable chunk
  c.search.seed = 0
  # The verifier of the search: 'learned' (the PRM of --mode train_prm) or 'exact' (experiments/test_time_compute/
  # verifiers.py: q_hat ** remaining steps for a right prefix, 0 for a wrong one, + N(0, noise), verdicts flipped
  # with probability flip; where a path goes wrong, with probability decoy it becomes a decoy, rated as right +
  # decoy_bonus from there on; seeded by verifier_seed); the exact one needs no label / train_prm stage.
  c.search.verifier = 'learned'
  c.search.q_hat = 0.8
  c.search.noise = 0.0
  c.search.flip = 0.0
  c.search.decoy = 0.0
  c.search.decoy_bonus = 0.1
  # The policy of the search: 'trained' (--mode train's) or 'simulated' (spec §10's toy on the task's text: steps
  # right with probability simulated_q, no model; arithmetic.SimulatedPolicy), which needs no train stage.
  c.search.policy = 'trained'
  c.search.simulated_q = 0.75
  c.search.verifier_seed = 0

  c.select = ml_collections.ConfigDict()
  c.select.bins = 5
  c.select.seed = 0
  # samples per question, drawn apart from the searches, for the difficulty bins (oracle pass@1, mean verifier score;
  # the paper draws 2048); 0 = the largest search budget
  c.select.difficulty_samples = 0

  c.total_steps = 3000
  c.batch_size = 64
  c.log_every = 100
  c.eval_every = 0
  c.ckpt_every = 1000
  c.keep_ckpts = 1
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 100
  c.optim.b2 = 0.95

  if arg.variant == 'smoke':
    c.data.min_len = 3
    c.data.max_len = 5
    c.data.train_questions = 4000
    c.data.label_questions = 400
    c.data.eval_questions = 40
    c.total_steps = 300
    c.log_every = 50
    c.ckpt_every = 300
    c.labels.samples = 4
    c.labels.rollouts = 4
    c.labels.chunk = 400
    c.prm.total_steps = 400
    c.prm.batch_size = 64
    c.prm.lr = 1e-3
    c.prm.warmup_steps = 10
    c.prm.eval_every = 50
    c.search.budgets = (2, 4, 8)
    c.search.strategies = ('best_of_n', 'beam_m2_k0', 'dvts_m2_k0')
    c.search.chunk = 40
  return c
