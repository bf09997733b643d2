"""The job controller's pages as a scientist uses them, in Debian's headless Chromium: a fit page that
explains the fit (summary, live convergence, figures in the report's order, the log, the first failure),
honest states, the time limit and resume, a list with filters, a form that helps and keeps its values,
delete after a confirmation, HTML errors, a deep link through the login, no path of the service's host.

One service for the module, the local backend (fits run under mpiexec beside it), as its own user.
With DOCS_SCREENSHOTS=DIR the fit page's screenshots (running, finished) are written there (docs/).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLE, MODELS, chromium, wait_until
from service_helpers import Service, follow, on_page, submit, wait_for

pytestmark = pytest.mark.mpi_launch
SLOW = MODELS / "slow_peak.py"
SLOW_FIT = {"samples": "6000", "burn": "100", "seed": "3", "args": "0.005"}  # about 25 s on 2 ranks
SMALL = {"samples": "2000", "burn": "100", "seed": "7"}


@pytest.fixture(scope="module")
def service(mpiexec):
    limits = '[uploads]\nmax_mb = 4\n[limits]\nmax_ranks = 2\nmax_time = "00:10:00"\nmax_fits = 20\n'
    running = Service("local", limits).start()
    yield running
    running.close()


def _login(browser, service: Service, who: str = "alice") -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{service.url}/login")
    browser.find_element(By.NAME, "token").send_keys(service.tokens[who])
    browser.find_element(By.ID, "login").click()
    _until(browser, lambda: "/login" not in browser.current_url, "a page after logging in")


_until = on_page  # the shared browser wait (service_helpers)


def _server_paths(service: Service) -> list[str]:
    """Paths of the service's host that no page may show: its data, its Python, its source."""
    source = str(Path(__file__).resolve().parents[1] / "src")
    return [str(service.data), str(service.base), sys.prefix, sys.base_prefix, source, "site-packages"]


def _no_server_path(text: str, service: Service, where: str) -> None:
    for path in _server_paths(service):
        assert path not in text, f"{where} shows the server's path {path!r}"


def _requests_made(browser) -> list[str]:
    return browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")


def _console_errors(browser) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def _rows(browser) -> set[str]:
    from selenium.webdriver.common.by import By

    return {r.get_attribute("data-fit") for r in browser.find_elements(By.CSS_SELECTOR, "#fits tr[data-fit]")}


def _shot(browser, name: str) -> None:
    where = os.environ.get("DOCS_SCREENSHOTS")
    if where:
        browser.save_screenshot(str(Path(where) / name))


def test_a_fit_page_explains_the_fit_while_it_runs_and_when_it_is_done(service):
    """Submit through the form with a label: PENDING or RUNNING at once (never UNKNOWN), a summary of the
    settings, a live convergence plot, no Cancel once it completed, figures in the report's order with
    its captions, the log's tail, and a report page that links back; no request to /undefined."""
    from selenium.webdriver.common.by import By

    browser = chromium()
    alice = service.client("alice")
    try:
        _login(browser, service)
        browser.get(f"{service.url}/submit")
        assert browser.find_element(By.ID, "samples").get_attribute("placeholder") == "default 10000"
        browser.find_element(By.ID, "model").send_keys(str(SLOW))
        for field, value in {**SLOW_FIT, "label": "peak, slow", "ntasks": "2"}.items():
            browser.find_element(By.ID, field).send_keys(value)
        browser.find_element(By.ID, "submit").click()
        _until(browser, lambda: "/fits/" in browser.current_url, "the fit's page after submitting")
        fit_id = browser.current_url.rsplit("/", 1)[1]
        states = []

        def running_with_steps() -> bool:
            states.append(alice.get(f"/api/v1/fits/{fit_id}").json()["state"])
            drawn = browser.find_elements(By.CSS_SELECTOR, "#convergence polyline")
            points = len(drawn[0].get_attribute("points").split()) if drawn else 0
            return points >= 4 and "step" in browser.find_element(By.ID, "progress-text").text

        _until(browser, running_with_steps, "the convergence plot, 4 points, while it runs")
        assert "UNKNOWN" not in states and states[0] in ("PENDING", "RUNNING"), states
        summary = browser.find_element(By.ID, "summary").text
        for shown in ("dream", "samples 6000", "burn 100", "seed 3", "Ranks\n2", "00:10:00", "Time left"):
            assert shown in summary, (shown, summary)
        assert browser.find_element(By.ID, "cancel").is_displayed()
        _shot(browser, "service-fit-running.png")

        _until(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#figures img"), "figures", 240)
        assert browser.find_element(By.ID, "state").text == "COMPLETED"
        assert not browser.find_elements(By.ID, "cancel")
        assert not browser.find_element(By.ID, "drawing").is_displayed()
        captions = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#figures figcaption")]
        assert captions[0] == "slow_peak: the model and the data", captions  # the report's order
        assert "Log-likelihood convergence" in captions
        assert "Finished" in browser.find_element(By.ID, "summary").text
        assert browser.find_element(By.ID, "log").text.strip()
        _no_server_path(browser.page_source, service, "the fit page")
        _shot(browser, "service-fit-completed.png")

        browser.find_element(By.ID, "report-link").click()
        _until(browser, lambda: browser.find_elements(By.ID, "report"), "the report page")
        browser.switch_to.frame(browser.find_element(By.ID, "report"))
        body = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731
        _until(browser, lambda: "χ²" in body(), "the report in its frame")
        _no_server_path(browser.page_source, service, "the report")
        browser.switch_to.default_content()
        browser.find_element(By.ID, "back").click()
        _until(browser, lambda: browser.current_url.endswith(f"/fits/{fit_id}"), "back to the fit's page")

        browser.get(service.url)  # the list: the label, the id, the fitter, times with their time zone
        row = browser.find_element(By.CSS_SELECTOR, f'#fits tr[data-fit="{fit_id}"]').text
        assert "peak, slow" in row and fit_id in row and "dream" in row, row
        assert re.search(r"\d\d:\d\d [A-Z]{3,4}", row), row
        made = _requests_made(browser)
        assert not [u for u in made if u.endswith("/undefined")], made
        assert not [e for e in _console_errors(browser) if "undefined" in e], _console_errors(browser)
    finally:
        browser.quit()


def test_the_submit_page_requests_nothing_undefined_and_the_form_keeps_its_values(service, tmp_path):
    """An error keeps every value and the chosen files (the form is sent in place); a model named
    `.peak.py` gets a clear error; without the page's script the server keeps the values too."""
    from selenium.webdriver.common.by import By

    hidden = tmp_path / ".peak.py"
    hidden.write_text(EXAMPLE.read_text())
    browser = chromium()
    try:
        _login(browser, service)
        browser.get(f"{service.url}/submit")
        browser.find_element(By.ID, "model").send_keys(str(hidden))
        for field, value in {"samples": "1234", "seed": "5", "label": "mine", "time": "00:05:00"}.items():
            browser.find_element(By.ID, field).send_keys(value)
        browser.find_element(By.ID, "submit").click()
        _until(browser, lambda: browser.find_element(By.ID, "error").text, "the error")
        error = browser.find_element(By.ID, "error").text
        assert "starts with a dot" in error and "rename it" in error and "IndexError" not in error, error
        for field, value in {"samples": "1234", "seed": "5", "label": "mine", "time": "00:05:00"}.items():
            assert browser.find_element(By.ID, field).get_attribute("value") == value, field
        assert browser.execute_script("return document.getElementById('model').files.length") == 1
        made = _requests_made(browser)
        assert not [u for u in made if u.endswith("/undefined")], made

        big = tmp_path / "big.dat"  # past the upload limit: refused as it arrives, said in the page
        big.write_bytes(b"0" * (6 << 20))
        browser.find_element(By.ID, "data").send_keys(str(big))
        browser.find_element(By.ID, "submit").click()
        _until(browser, lambda: "HTTP 413" in browser.find_element(By.ID, "error").text, "the 413 said")
        assert "larger than the 4 MB" in browser.find_element(By.ID, "error").text
        assert browser.find_element(By.ID, "samples").get_attribute("value") == "1234"
    finally:
        browser.quit()

    alice = service.client("alice")  # the same without the script: the page comes back with the values
    csrf = alice.get("/api/v1/me").json()["csrf"]
    sent = alice.post(
        "/submit",
        files=[("model", (".peak.py", EXAMPLE.read_bytes(), "text/x-python"))],
        data={"csrf": csrf, "samples": "1234", "label": "mine", "args": "a b"},
    )
    assert sent.status_code == 422 and 'value="1234"' in sent.text and 'value="mine"' in sent.text
    assert "You sent .peak.py" in sent.text


def test_a_model_that_imports_mpi4py_is_accepted_by_the_service(service, tmp_path):
    model = tmp_path / "imports_mpi.py"
    model.write_text("from mpi4py import MPI\n" + EXAMPLE.read_text())
    answer = submit(service.client("alice"), model, **SMALL)
    assert answer.status_code == 201, answer.text
    assert follow(service.client("alice"), answer.json()["id"])[-1]["state"] == "COMPLETED"


def test_failed_evaluations_show_their_count_and_first_traceback_and_no_server_path(service):
    alice = service.client("alice")
    fit = submit(alice, MODELS / "raises_sometimes.py", args="0.05", **SMALL).json()
    assert follow(alice, fit["id"])[-1]["state"] == "COMPLETED"
    detail = wait_for(alice, fit["id"], {"COMPLETED"})
    assert detail["failed_evaluations"] > 0 and "RuntimeError" in detail["first_failure"]
    api = alice.get(f"/api/v1/fits/{fit['id']}").text
    _no_server_path(api, service, "the API's fit")
    from selenium.webdriver.common.by import By

    browser = chromium()
    try:
        _login(browser, service)
        browser.get(f"{service.url}/fits/{fit['id']}")
        _until(browser, lambda: browser.find_elements(By.ID, "first-failure"), "the first failure")
        count = browser.find_element(By.ID, "failed-evaluations").text
        assert f"failed on {detail['failed_evaluations']} of {detail['evaluations']}" in count, count
        first = browser.find_element(By.ID, "first-failure").text
        assert "the model failed here on purpose" in first and 'File "raises_sometimes.py"' in first, first
        assert 'File "bumps/' in first  # Bumps' frames by module, not where Python is installed
        _no_server_path(browser.page_source, service, "the fit page")
        browser.get(f"{service.url}/fits/{fit['id']}/report.html")
        _no_server_path(browser.page_source, service, "the report")
    finally:
        browser.quit()


def test_a_failed_fit_shows_no_server_path_anywhere(service):
    alice = service.client("alice")
    fit = submit(alice, MODELS / "fails_in_fit.py", init="random", seed="3", samples="2000").json()
    assert follow(alice, fit["id"])[-1]["state"] == "FAILED"
    detail = alice.get(f"/api/v1/fits/{fit['id']}")
    assert detail.json()["error"]["traceback"], detail.text
    _no_server_path(detail.text, service, "the API's failed fit")
    page = alice.get(f"/fits/{fit['id']}")
    assert page.status_code == 200 and 'id="traceback"' in page.text
    for text in (page.text, alice.get("/").text):
        _no_server_path(text, service, "a page of a failed fit")


def test_the_time_limit_holds_on_the_local_backend_and_the_page_resumes_the_fit(service):
    from selenium.webdriver.common.by import By

    alice = service.client("alice")
    # fast while the service times it (the estimate fits 12 s), slow once it runs: the limit ends it
    fit = submit(alice, MODELS / "slows_down.py", time="00:00:12", **SLOW_FIT).json()
    browser = chromium()
    try:
        _login(browser, service)
        browser.get(f"{service.url}/fits/{fit['id']}")
        _until(browser, lambda: browser.find_elements(By.ID, "resume"), "TIMEOUT and its Resume button", 120)
        assert browser.find_element(By.ID, "state").text == "TIMEOUT"
        assert "reached its time limit (00:00:12)" in browser.find_element(By.ID, "stopped").text
        browser.find_element(By.ID, "resume").click()  # the rest of the fit, from its checkpoint
        state = lambda: browser.find_element(By.ID, "state").text  # noqa: E731
        _until(browser, lambda: state() in ("PENDING", "RUNNING"), "resumed")
    finally:
        browser.quit()
    # resumed with the same 12 s: it times out again or completes; either way it went on from its checkpoint
    ended = wait_for(alice, fit["id"], {"TIMEOUT", "COMPLETED"}, timeout=120)
    assert ended["progress"]["step"] > 0


def test_delete_asks_first_and_errors_are_pages_and_a_deep_link_survives_the_login(service):
    from selenium.webdriver.common.by import By

    alice = service.client("alice")
    fit = submit(alice, EXAMPLE, label="to delete", **SMALL).json()
    follow(alice, fit["id"])
    wait_until(lambda: alice.get(f"/api/v1/fits/{fit['id']}").json()["files"], "the fit's files")
    browser = chromium()
    try:
        browser.get(f"{service.url}/fits/{fit['id']}")  # not logged in: the login, then this page
        assert "/login?next=" in browser.current_url
        browser.find_element(By.NAME, "token").send_keys(service.tokens["alice"])
        browser.find_element(By.ID, "login").click()
        _until(browser, lambda: "/login" not in browser.current_url, "a page after logging in")
        assert browser.current_url == f"{service.url}/fits/{fit['id']}"

        browser.find_element(By.ID, "delete").click()  # a page that asks; keep it
        _until(browser, lambda: browser.find_elements(By.ID, "confirm-delete"), "the confirmation")
        assert "to delete" in browser.find_element(By.TAG_NAME, "h1").text
        browser.find_element(By.ID, "keep").click()
        assert alice.get(f"/api/v1/fits/{fit['id']}").status_code == 200
        browser.find_element(By.ID, "delete").click()
        browser.find_element(By.ID, "confirm-delete").click()
        _until(browser, lambda: browser.current_url.rstrip("/") == service.url, "the list after deleting")
        assert alice.get(f"/api/v1/fits/{fit['id']}").status_code == 404

        browser.get(f"{service.url}/fits/{fit['id']}")  # an HTML page for a person, JSON for a script
        assert browser.find_element(By.TAG_NAME, "h1").text == "Not found"
        assert fit["id"] in browser.find_element(By.ID, "error").text
        assert alice.get(f"/api/v1/fits/{fit['id']}").json() == {"detail": f"no fit {fit['id']!r}"}

        browser.get(f"{service.url}/favicon.ico")
        assert browser.current_url.endswith("/static/favicon.svg")
        icon = alice.get("/favicon.ico", follow_redirects=True)
        assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    finally:
        browser.quit()


def test_the_list_filters_by_state_name_and_date(service):
    from selenium.webdriver.common.by import By

    alice = service.client("alice")
    fits = [submit(alice, EXAMPLE, label=label, **SMALL).json() for label in ("alpha run", "beta run")]
    for fit in fits:
        follow(alice, fit["id"])
    browser = chromium()
    try:
        _login(browser, service)
        browser.find_element(By.ID, "f-name").send_keys("alpha")
        browser.find_element(By.ID, "apply-filters").click()
        _until(browser, lambda: "name=alpha" in browser.current_url, "the filtered list")
        shown = _rows(browser)
        assert fits[0]["id"] in shown and fits[1]["id"] not in shown, shown
        browser.get(f"{service.url}/?state=RUNNING&name=beta")
        assert "No fit matches these filters" in browser.find_element(By.ID, "empty").text
        tomorrow = time.strftime("%Y-%m-%d", time.localtime(time.time() + 86400))
        browser.get(f"{service.url}/?since={tomorrow}")
        assert not browser.find_elements(By.CSS_SELECTOR, "#fits tr[data-fit]")
        browser.get(f"{service.url}/?state=COMPLETED")
        shown = _rows(browser)
        assert {f["id"] for f in fits} <= shown
        table = browser.find_element(By.ID, "fits")  # after two live refreshes: not reloaded to show all
        _until(browser, lambda: int(table.get_attribute("data-refreshed") or 0) >= 2, "two refreshes")
        assert "state=COMPLETED" in browser.current_url
    finally:
        browser.quit()


def test_a_fit_drawing_its_figures_says_so_shows_its_result_and_offers_no_cancel(service):
    from selenium.webdriver.common.by import By

    alice = service.client("alice")
    fit = submit(alice, MODELS / "slow_plot.py", args="15", samples="400", burn="20", seed="1").json()
    browser = chromium()
    try:
        _login(browser, service)
        browser.get(f"{service.url}/fits/{fit['id']}")
        _until(browser, lambda: browser.find_element(By.ID, "drawing").is_displayed(), "drawing figures", 120)
        cancel = browser.find_elements(By.ID, "cancel")
        assert not cancel or not cancel[0].is_displayed()
        browser.get(f"{service.url}/fits/{fit['id']}")  # loaded while drawing: what is there already
        if browser.find_element(By.ID, "drawing").is_displayed():
            assert browser.find_elements(By.CSS_SELECTOR, "#parameters tbody tr")
            assert not browser.find_elements(By.ID, "cancel")
        _until(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#figures img"), "the figures", 120)
        assert not browser.find_element(By.ID, "drawing").is_displayed()
        assert browser.find_element(By.ID, "state").text == "COMPLETED"
    finally:
        browser.quit()


@pytest.mark.parametrize(
    ("asked", "goes"),
    [
        ("/fits/abc?x=1", "/fits/abc?x=1"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("/\t/evil.example", "/"),
        ("https://evil.example/", "/"),
        ("", "/"),
        ("/fits/\u00e9", "/"),
    ],
)
def test_after_the_login_only_a_page_of_this_service(asked, goes):
    from bumps_mpi.service.pages import safe_next

    assert safe_next(asked) == goes


def test_a_report_the_model_rewrote_runs_nothing_in_its_frame(service):
    """The model can write report.html: planted with scripts, it runs none, in its frame or the page."""
    from selenium.webdriver.common.by import By

    alice = service.client("alice")
    fit = submit(alice, EXAMPLE, **SMALL).json()
    follow(alice, fit["id"])
    wait_until(lambda: "report.html" in alice.get(f"/api/v1/fits/{fit['id']}").json()["files"], "the report")
    planted = service.data / "fits" / fit["id"] / "job" / "report.html"
    planted.write_text(
        "<html><head><title>planted</title></head><body><p id='text'>still here</p>"
        "<script>document.title = 'ran'; top.document.title = 'ran';"
        "document.getElementById('text').textContent = 'ran'</script></body></html>"
    )
    browser = chromium()
    try:
        _login(browser, service)
        browser.get(f"{service.url}/fits/{fit['id']}/report")
        top = browser.title
        assert top.startswith("Report of") and "ran" not in top
        browser.switch_to.frame(browser.find_element(By.ID, "report"))
        _until(browser, lambda: browser.find_element(By.ID, "text").text, "the planted report in its frame")
        assert browser.find_element(By.ID, "text").text == "still here"
        assert browser.find_element(By.TAG_NAME, "title").get_attribute("textContent") == "planted"
        browser.switch_to.default_content()
        assert browser.title == top
    finally:
        browser.quit()


def test_the_form_shows_the_estimate_before_submitting_and_a_fit_too_long_is_refused(service):
    """The form's estimate (the model checked and timed by the service, nothing submitted), up to the
    user's ranks, with the form's row marked; a fit its time limit cannot hold is flagged in the form and
    refused at submission with the reason and what to change."""
    from selenium.webdriver.common.by import By

    alice = service.client("alice")
    files = [("model", (SLOW.name, SLOW.read_bytes(), "text/x-python"))]
    found = alice.post("/api/v1/estimate", files=files, data={**SLOW_FIT, "ntasks": "2"}).json()
    assert [row["ranks"] for row in found["estimate"]["rows"]] == [1, 2]  # max_ranks = 2 for alice
    assert found["estimate"]["evaluations"] == 251 * 40 and found["estimate"]["chosen"] == 2
    assert found["refused"] is None and found["limits"] == {"max_ranks": 2, "max_time": "00:10:00"}
    too_long = alice.post("/api/v1/estimate", files=files, data={**SLOW_FIT, "time": "00:00:10"}).json()
    assert "longer than its time limit 00:00:10" in too_long["refused"]
    assert "at most 00:10:00 for you" in too_long["refused"]
    refused = submit(alice, SLOW, time="00:00:10", **SLOW_FIT)
    assert refused.status_code == 422 and "the fit is estimated to take" in refused.json()["detail"]
    assert not list((service.data / "fits").glob("estimate-*"))  # the estimates' uploads are gone
    browser = chromium()
    try:
        _login(browser, service)
        browser.get(f"{service.url}/submit")
        for field, value in {"samples": "6000", "burn": "100", "args": "0.005"}.items():
            browser.find_element(By.ID, field).send_keys(value)
        browser.find_element(By.ID, "model").send_keys(str(SLOW))  # choosing the model estimates the fit
        _until(browser, lambda: browser.find_elements(By.ID, "estimate-table"), "the estimate", 60)
        assert "10,040 evaluations" in browser.find_element(By.ID, "estimate-summary").text
        chosen = browser.find_element(By.CSS_SELECTOR, "#estimate-table tr.chosen").text
        assert chosen.startswith("2 ") and "these settings" in chosen  # the service's default: 2 ranks
        browser.find_element(By.ID, "time").send_keys("00:00:10")
        browser.find_element(By.ID, "label").click()  # the time field's change: estimated again
        _until(browser, lambda: browser.find_elements(By.ID, "estimate-refused"), "the refusal", 60)
        assert "would refuse this fit" in browser.find_element(By.ID, "estimate-refused").text
        assert not _console_errors(browser)
        browser.execute_script("document.getElementById('time').scrollIntoView()")
        _shot(browser, "service-submit-estimate.png")
    finally:
        browser.quit()
