"""A NaN/inf loss skips the update, K in a row stop the run, the last good checkpoint stays intact."""

from __future__ import annotations

import pytest
import torch

from _checkpoint_tiny import flat_params, optimizer_and_scheduler, tiny
from longrl.infra.checkpoint import Checkpointer
from longrl.infra.guard import NonFiniteError, NonFiniteGuard


def test_nonfinite_updates_are_skipped_and_the_checkpoint_survives(tmp_path):
    torch.manual_seed(0)
    model, tok = tiny()
    opt, sched = optimizer_and_scheduler(model)
    ckpt = Checkpointer(tmp_path, tokenizer=tok)
    guard = NonFiniteGuard(max_consecutive=2)
    ids = torch.randint(0, model.config.text_config.vocab_size, (2, 12))
    poison = {3, 4}  # these steps' losses are NaN
    good = None
    with pytest.raises(NonFiniteError, match="step 4"):
        for step in range(1, 6):
            loss = model(input_ids=ids, labels=ids).loss
            if step in poison:
                loss = loss * float("nan")
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if guard.check(loss, grad_norm, step=step):
                opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            if step == 2:
                ckpt.save(step, model=model, optimizer=opt, scheduler=sched, extra={})
                good = flat_params(model).clone()
            if step > 2:
                assert torch.equal(flat_params(model), good)  # the skipped update changed nothing
    assert torch.isfinite(flat_params(model)).all()
    fresh, _ = tiny(seed=3)
    fresh_opt, fresh_sched = optimizer_and_scheduler(fresh)
    assert Checkpointer(tmp_path).load_latest(model=fresh, optimizer=fresh_opt, scheduler=fresh_sched)["step"] == 2
    assert torch.equal(flat_params(fresh), good)
