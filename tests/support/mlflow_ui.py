"""Checks on the MLflow UI in headless Chromium: a sweep's parent run and its nested trial runs in the runs table,
and the trials' generated answers compared prompt by prompt in the Evaluation view."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TIMEOUT_S = 60  # the UI bundle is large and these machines are slow

# MLflow 3.x opens `#/experiments/<id>` on the GenAI overview (traces); workflowType=machine_learning selects the
# "Model training" side, whose Runs tab is the table of training runs.
RUNS_PAGE = "{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def check_experiment_page(
    base_url: str,
    experiment_id: str,
    parent_run_name: str,
    child_run_names: list[str],
    screenshot: Path,
    *,
    timeout: float = TIMEOUT_S,
) -> str:
    """Open an experiment's runs table, expand the parent run and check that every child run is listed.

    Args:
        base_url: The MLflow server, e.g. `http://127.0.0.1:5000`.
        experiment_id: The experiment holding the runs.
        parent_run_name: The run the children are nested under (tag `mlflow.parentRunId`).
        child_run_names: Runs that must be visible once the parent row is expanded.
        screenshot: Where to save a PNG of the page, written on success and before raising on failure.
        timeout: Seconds to wait for the parent run, and again for the children after expanding it.

    Returns:
        The page's visible text.

    Raises:
        AssertionError: A run name is not visible in time; the message names it and the screenshot.
    """
    url = RUNS_PAGE.format(base=base_url.rstrip("/"), experiment_id=experiment_id)
    with _page(url, screenshot, timeout) as (driver, fail):
        _expand(driver, parent_run_name, child_run_names, fail, timeout)
        driver.save_screenshot(str(screenshot))
        return _visible_text(driver)


def check_answers_view(
    base_url: str,
    experiment_id: str,
    parent_run_name: str,
    answers: dict[str, tuple[str, str]],
    prompt: str,
    screenshot: Path,
    *,
    timeout: float = TIMEOUT_S,
) -> str:
    """Open the experiment's Evaluation view (the runs page's evaluation mode, `compareRunsMode=ARTIFACT`) on the
    runs in `answers` (run id -> (run name, its answer to `prompt`); filtered to those runs, so each gets a column,
    and their parent run `parent_run_name`, which MLflow lists with them and is expanded) and check that their
    answers tables are compared prompt by prompt: grouped by `prompt`, comparing `answer`, each run's answer in
    the row of `prompt` (the parent, which has no table, shows "(empty)").

    Returns:
        The page's visible text. Raises AssertionError (naming the screenshot) when something is not shown.
    """
    from urllib.parse import quote

    from selenium.common.exceptions import TimeoutException

    ids = ", ".join(f"'{run_id}'" for run_id in answers)
    url = (
        RUNS_PAGE.format(base=base_url.rstrip("/"), experiment_id=experiment_id)
        + "&compareRunsMode=ARTIFACT&searchFilter="
        + quote(f"attributes.run_id IN ({ids})")
    )
    with _page(url, screenshot, timeout) as (driver, fail):
        names = [name for name, _ in answers.values()]
        _expand(driver, parent_run_name, names, fail, timeout)

        def shown() -> bool:
            text = _visible_text(driver)
            if not all(_visible(driver, n) for n in names):
                return False
            if not all(s in text for s in ("Group by:\nprompt", "Compare:\nanswer")):
                return False
            return _answers_in_row(text, prompt, [a for _, a in answers.values()])

        try:
            _wait(driver, timeout).until(lambda d: shown())
        except TimeoutException:
            raise fail(f"the answers of {names} to {prompt!r} are not compared in the Evaluation view") from None
        driver.save_screenshot(str(screenshot))
        return _visible_text(driver)


def _answers_in_row(text: str, prompt: str, answers: list[str]) -> bool:
    """Whether the view's text has the row of `prompt` (shown with its whitespace collapsed, cut short when long)
    with every answer in it: the text from the prompt's cell to the next row's (the next line starting like the
    prompt, whose template every row shares); an empty answer shows as "(empty)", as does the parent's cell."""
    norm = " ".join(prompt.split())
    lines = text.split("\n")
    start = next(
        (i for i, line in enumerate(lines) if len(line) >= 20 and norm.startswith(" ".join(line.split()))), None
    )
    if start is None:
        return False
    head = norm[:30]
    end = next((j for j in range(start + 1, len(lines)) if " ".join(lines[j].split()).startswith(head)), len(lines))
    row = " ".join(" ".join(lines[start + 1 : end]).split())
    empties = 1 + sum(1 for a in answers if not a.strip())  # the parent's cell too
    return row.count("(empty)") >= empties and all(" ".join(a.split()) in row for a in answers if a.strip())


@contextmanager
def _page(url: str, screenshot: Path, timeout: float):
    """Headless Chromium on `url`; yields the driver and `fail(problem)`, an AssertionError naming the page, the
    screenshot (saved) and the visible text."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=2400,1200"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.get(url)

        def fail(problem: str) -> AssertionError:
            driver.save_screenshot(str(screenshot))
            return AssertionError(
                f"{problem} on {driver.current_url} (opened {url}); screenshot: {screenshot}\n"
                f"visible text:\n{_visible_text(driver)[:2000]}"
            )

        yield driver, fail
    finally:
        driver.quit()


def _wait(driver, timeout: float):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.5, ignored_exceptions=(StaleElementReferenceException,))


def _expand(driver, parent_run_name: str, child_run_names: list[str], fail, timeout: float) -> None:
    """Wait for the parent run's row, then expand it until every child run's row is visible."""
    from selenium.common.exceptions import ElementClickInterceptedException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    wait = _wait(driver, timeout)
    # Run names are links to the run page, inside the ag-grid rows of the runs table.
    try:
        wait.until(ec.visibility_of_element_located((By.XPATH, _run_link(parent_run_name))))
    except TimeoutException:
        raise fail(f"parent run {parent_run_name!r} not visible within {timeout:.0f} s") from None
    if all(_visible(driver, name) for name in child_run_names):
        return
    # Collapsed (the default): the expander is the button in the parent row's Run Name cell (the cell holding the
    # run's link, in the Evaluation view's narrow list of runs too).
    row = _run_link(parent_run_name) + "/ancestor::div[@role='row'][1]"
    expander = f"{row}//div[@role='gridcell'][contains(@col-id, 'Run Name')]//button"
    expander = f"({expander} | {_run_link(parent_run_name)}/ancestor::div[@role='gridcell'][1]//button)"
    try:
        button = wait.until(ec.element_to_be_clickable((By.XPATH, expander)))
    except TimeoutException:
        raise fail(
            f"no expander button in the row of parent run {parent_run_name!r} "
            "(are the children tagged mlflow.parentRunId with its run id?)"
        ) from None
    try:
        button.click()
    except ElementClickInterceptedException:  # a popover over the table; the button still works
        driver.execute_script("arguments[0].click();", button)
    try:
        wait.until(lambda d: all(_visible(d, name) for name in child_run_names))
    except TimeoutException:
        missing = [name for name in child_run_names if not _visible(driver, name)]
        raise fail(
            f"child runs {missing} not visible under parent run {parent_run_name!r} {timeout:.0f} s after expanding it"
        ) from None


def _visible(driver, run_name: str) -> bool:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return any(e.is_displayed() for e in driver.find_elements(By.XPATH, _run_link(run_name)))
    except StaleElementReferenceException:  # ag-grid re-rendered the row between finding and checking it
        return False


def _visible_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _run_link(run_name: str) -> str:
    """XPath of the runs-table link whose text is exactly `run_name`."""
    return f"//div[@role='row']//a[contains(@href, '/runs/')][normalize-space()={_xpath_literal(run_name)}]"


def _xpath_literal(text: str) -> str:
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    return "concat(" + ', "\'", '.join(f"'{part}'" for part in text.split("'")) + ")"
