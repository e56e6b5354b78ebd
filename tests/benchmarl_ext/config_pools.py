"""The configuration fuzz's pools, in one place: for every field of the algorithms', the
experiment's and the tasks' configs, values that are valid, extreme (valid, far out) and invalid.
A field added to a YAML must join a pool or ``NOT_FUZZED`` (test_config_fuzz checks it).

Values are Hydra override strings (``algorithm.<field>=<value>``)."""

from __future__ import annotations

POOLS = {
    "algorithm": {
        # shared by MAPPO, MAT, MAGPO, HAPPO and A2PO
        "share_param_critic": (["true", "false"], [], ["maybe"]),
        "clip_epsilon": (["0.2", "0.1"], ["1e-6", "0.999"], ["0", "1.5", "-0.2"]),
        "entropy_coef": (["0.0", "0.01"], ["10.0"], ["-0.1"]),
        "critic_coef": (["1.0", "0.5"], ["100.0"], []),
        "loss_critic_type": (["l2", "smooth_l1"], [], ["l3"]),
        "lmbda": (["0.95", "0.9"], ["0.0", "1.0"], ["1.5", "-0.1"]),
        "scale_mapping": (["biased_softplus_1.0", "exp"], [], ["square"]),
        "use_tanh_normal": (["true", "false"], [], []),
        "minibatch_advantage": (["true", "false"], [], []),
        # MAGPO and CTDS
        "delta": (["1.5", "3.0", "auto"], ["1.0001", "1e6", "inf"], ["1.0", "0.5", "tight"]),
        "delta_target_kl": (["0.01"], ["1e-9", "100.0"], ["0", "-1"]),
        "delta_bounds": (["[1.1,3.0]"], ["[1.0001,1e6]"], ["[3.0,1.1]", "[1.0,2.0]"]),
        "aux_coef": (["0.0", "1.0"], ["1e6"], ["-1.0", "nan"]),
        "learner_kl": (["forward", "reverse"], [], ["both"]),
        "guider": (["anchored", "transformer", "residual"], [], ["lstm"]),
        "guider_memory": (["none", "gru", "retention"], [], ["lstm"]),
        "guider_decay_scaling": (["0.8", "1.0"], ["1e-6"], ["0", "1.5"]),
        "guider_chunk": (["null", "5"], ["1"], ["0", "3"]),
        "guider_embed_dim": (["8", "16"], ["1"], ["0", "-4"]),
        "guider_heads": (["1", "2"], [], ["0"]),
        "guider_layers": (["1", "2"], [], ["0"]),
        "guider_lr": (["null", "1e-3"], ["0.999", "1e-9"], ["0", "1.5"]),
        "guider_warmup_frames": (["0", "80"], ["1000000"], ["-1", "0.5"]),
        "agent_order": (["random", "fixed", "per_epoch", "semi_greedy"], [], ["alphabetical"]),
        "backtrack": (["false", "true"], [], []),
        "normalize_advantage": (["true", "false"], [], []),
        "clip_value": (["null", "0.2"], ["1e-6", "1e6"], ["0", "-0.2"]),
        "backend": (["auto", "reference"], [], ["cuda"]),
        "learner_update": (["parallel", "sequential"], [], ["alternating"]),
        # A2PO
        "preceding_clip": (["0.1", "0.2"], ["1e-6", "0.999"], ["0", "1.0"]),
        "clip_floor": (["0.5", "1.0"], ["1e-6"], ["0", "1.5"]),
        # MAT
        "embed_dim": (["8", "16"], ["1"], ["0"]),
        "heads": (["1", "2"], [], ["0"]),
        "layers": (["1", "2"], [], ["0"]),
    },
    "experiment": {
        "gamma": (["0.99", "0.9"], ["0.0", "1.0"], ["1.5", "-0.1"]),
        "lr": (["3e-4", "1e-3"], ["1.0", "1e-9"], ["0", "-1e-3"]),
        "adam_eps": (["1e-6"], ["1e-12"], ["0", "-1"]),
        "clip_grad_norm": (["true", "false"], [], []),
        "clip_grad_val": (["0.5", "5"], ["1e-6", "1e6"], ["0", "-1"]),
        "share_policy_params": (["true", "false"], [], []),
        "prefer_continuous_actions": (["true", "false"], [], []),
        "on_policy_n_minibatch_iters": (["1", "2"], ["20"], ["0", "-1"]),
        "on_policy_minibatch_size": (["40", "80"], ["1"], ["0", "-40"]),
        "evaluation_episodes": (["2", "3"], ["1"], ["0"]),
        "evaluation_deterministic_actions": (["true", "false"], [], []),
        "evaluation_static": (["false", "true"], [], []),
        "evaluation": (["true", "false"], [], []),
    },
    "task": {
        "vmas/balance": {
            "max_steps": (["20", "10"], ["1"], ["0", "-3"]),
            "n_agents": (["3", "4"], ["2", "12"], ["0", "1"]),
            "random_package_pos_on_line": (["true", "false"], [], []),
            "package_mass": (["5.0", "1.0"], ["1e-3", "1e3"], []),
        },
        "coordsum/3x10": {
            "n_agents": (["3", "2"], ["6"], ["1", "0"]),
            "num_actions": (["10", "5"], ["2"], ["1"]),
            "maxval": (["30", "10"], ["1"], ["0"]),
            "time_limit": (["10", "5"], ["1"], ["0"]),
            "memory": (["authors", "per_target"], [], ["none"]),
            "time_limit_mode": (["terminate", "truncate"], [], ["stop"]),
        },
    },
}

# Fields the fuzz leaves alone, each with the reason.
NOT_FUZZED = {
    "experiment": {
        # where things run or are written: one machine's facts, checked by test_trust's table
        "sampling_device", "train_device", "buffer_device", "loggers", "project_name", "wandb_extra_kwargs",
        "create_json", "save_folder", "restore_file", "restore_map_location", "render",
        # sizes and schedules the tiny runs fix (test_trust's table refuses their bad values)
        "max_n_iters", "max_n_frames", "on_policy_collected_frames_per_batch", "on_policy_n_envs_per_worker",
        "evaluation_interval", "checkpoint_interval", "checkpoint_at_end", "keep_checkpoints_num",
        "exclude_buffer_from_checkpoint", "collect_with_grad", "parallel_collection", "adam_extra_kwargs",
        # off-policy algorithms only (not offered with a guider)
        "soft_target_update", "polyak_tau", "hard_target_update_frequency", "exploration_eps_init", "exploration_eps_end",
        "exploration_anneal_frames", "off_policy_collected_frames_per_batch", "off_policy_n_envs_per_worker",
        "off_policy_n_optimizer_steps", "off_policy_train_batch_size", "off_policy_memory_size",
        "off_policy_init_random_frames", "off_policy_use_prioritized_replay_buffer", "off_policy_prb_alpha",
        "off_policy_prb_beta",
    },
}
