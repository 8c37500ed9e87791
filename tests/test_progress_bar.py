"""The training bar's elapsed time, rate and ETA count training steps only."""

import io
import time

from tqdm.auto import tqdm

from jaxcls.train import trainer


def test_validation_time_is_left_out_but_no_step_is():
    bar = tqdm(total=200, file=io.StringIO(), mininterval=0.1)
    stepping = 0.0
    for i in range(100):
        start = time.perf_counter()
        time.sleep(0.01)  # a step; the bar prints at most every 0.1 s, so most are not printed
        bar.update(1)
        stepping += time.perf_counter() - start
        paused = time.perf_counter()
        if i == 49:
            time.sleep(0.5)  # a validation
        trainer.leave_out_of_bar(bar, time.perf_counter() - paused)
    elapsed = bar.format_dict["elapsed"]
    bar.close()
    # tqdm's unpause() after every step kept only the printed steps' time (elapsed near 0);
    # not leaving the validation out would add its 0.5 s.
    assert abs(elapsed - stepping) < 0.1, (elapsed, stepping)


def test_a_disabled_bar_is_left_alone():
    bar = tqdm(total=2, disable=True)  # what processes other than 0 of a multi-host run get
    trainer.leave_out_of_bar(bar, 1.0)
    bar.close()
