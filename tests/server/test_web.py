"""The pages of `vml serve`: a real browser (Debian's headless Chromium, driven by selenium)
logs in through the form and walks every page; plain HTTP checks that nobody sees what they
may not read, that paths in URLs stay inside the entry, and that posts need their form's
token. One screenshot per page goes to tests/artifacts/screenshots (or $VML_TEST_ARTIFACTS)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import pytest
from conftest import Vml
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = "/usr/bin/chromium"  # Debian's packages chromium and chromium-driver (scripts/setup): no browser downloads
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("VML_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts")
ODD_NAME = b"caf\xe9 <b>x<"  # not UTF-8, and HTML if it were not escaped
DIRECTORY_PAGE = 500  # vml/server/web.py shows this many names of a directory per page


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser):
    """The browser, without the cookies of an earlier test (every test server is 127.0.0.1)."""
    browser.execute_cdp_cmd("Network.clearBrowserCookies", {})
    return browser


def replaced(old):
    """A wait's condition: the page that held `old` is gone. Chromium says so in two ways: a stale element,
    or, while the new document is being built, an inspector error that the node is in no document."""

    def gone(_browser) -> bool:
        try:
            old.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as error:
            if "does not belong to the document" not in str(error):
                raise
            return True
        return False

    return gone


def follow(browser, element) -> None:
    """Click a link or a button, and wait until the page it leads to has replaced this one."""
    old = browser.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(browser, 10).until(replaced(old))


def log_in(browser, server, user: str) -> None:
    browser.get(f"{server.url}/login")
    browser.find_element(By.ID, "token").send_keys(server.tokens[user])
    follow(browser, browser.find_element(By.ID, "submit"))


def graph_lanes(text: str) -> list[tuple[str, str | None]]:
    """Each line of a drawn graph as (its lanes, the entry it names): what a page and the command line must agree on."""
    return [re.match(r"([*|/\\ ]*?) *([0-9a-f]{12})?(?: |$)", line).groups() for line in text.splitlines()]


def snap(browser, name: str) -> None:
    directory = ARTIFACTS / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(directory / f"{name}.png"))


def user_repository(tmp_path: Path, server, name: str) -> tuple[Vml, Path, dict]:
    """A user's own repository with area wa on a small guest tree, its remote the user's namespace."""
    token = server.add_user(name)
    home = tmp_path / name
    guest = home / "guest"
    (guest / "etc").mkdir(parents=True)
    (guest / "etc" / "hosts").write_text(f"127.0.0.1 {name}\n")
    vml = Vml(home)
    env = {"VML_TOKEN": token}
    vml("init", env=env)
    vml("area", "add", "wa", "--dir", str(guest), env=env)
    vml("remote", "add", "origin", server.ns(name), env=env)
    return vml, guest, env


def entry_ids(vml: Vml, env: dict, *refs: str) -> list[str]:
    return [entry["id"] for entry in vml("log", "--json", *refs, env=env).json()]


def session(server, token: str | None) -> httpx.Client:
    """A client holding the cookie a login through the form sets."""
    client = httpx.Client(base_url=server.url, timeout=60)
    if token:
        client.cookies.set("vml_session", token)
    return client


def test_a_user_browses_compares_and_takes_away_entries(tmp_path, server, page):
    alice, guest, env = user_repository(tmp_path, server, "alice")
    (guest / "home" / "user").mkdir(parents=True)
    (guest / "home" / "user" / "notes.txt").write_text("analysis notes\n")
    data = os.urandom(200_000)
    (guest / "data.bin").write_bytes(data)
    (guest / os.fsdecode(ODD_NAME)).write_bytes(b"odd\n")
    alice("commit", "-m", "first", env=env)
    (guest / "etc" / "hosts").write_text("10.0.0.1 changed\n")
    alice("commit", "-m", "second\n\nthe hosts file changed", env=env)
    newest, oldest = entry_ids(alice, env)
    alice("branch", "side", oldest, env=env)  # a branch that forks at the first entry: the graph has two lanes
    alice("switch", "side", env=env)
    (guest / "side.txt").write_text("on the side\n")
    alice("commit", "-m", "on a side branch", env=env)
    side, = entry_ids(alice, env, "-n", "1")
    alice("push", "origin", "main", "side", env=env)

    page.get(server.url + "/alice")  # not logged in: the login page, which comes back here after
    assert "/login" in page.current_url
    snap(page, "01-login")
    page.find_element(By.ID, "token").send_keys(server.tokens["alice"])
    follow(page, page.find_element(By.ID, "submit"))
    assert page.current_url == server.url + "/alice"
    cookie = page.get_cookie("vml_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] == server.tokens["alice"]

    follow(page, page.find_element(By.CSS_SELECTOR, "a.brand"))
    assert [a.text for a in page.find_elements(By.CSS_SELECTOR, "#namespaces td:first-child a")] == ["alice"]
    snap(page, "02-namespaces")
    follow(page, page.find_element(By.LINK_TEXT, "alice"))
    rows = {row.find_element(By.CSS_SELECTOR, "a.id").text: row.text for row in page.find_elements(By.CSS_SELECTOR, "#entries tbody tr")}
    assert set(rows) == {newest[:12], oldest[:12], side[:12]}
    assert "main second" in rows[newest[:12]] and "side on a side branch" in rows[side[:12]] and "first" in rows[oldest[:12]]
    snap(page, "03-entries")

    follow(page, page.find_element(By.ID, "graph-link"))
    drawn = page.find_element(By.ID, "graph").text
    printed = alice("log", "--graph", "--all", "--oneline", env=env).stdout
    assert graph_lanes(drawn) == graph_lanes(printed) and len(graph_lanes(drawn)) == 4, (drawn, printed)  # `vml log --graph --all`'s lanes
    snap(page, "04-graph")

    follow(page, page.find_element(By.LINK_TEXT, newest[:12]))
    assert page.find_element(By.ID, "entry-id").text == newest
    assert page.find_element(By.ID, "entry-message").text == "second\n\nthe hosts file changed"
    facts = page.find_element(By.ID, "facts").text
    assert "Area wa (dir:" in facts and "4 files, 3 directories" in facts and "logical" in facts and "stored" in facts, facts
    snap(page, "05-entry")

    follow(page, page.find_element(By.ID, "browse"))
    names = [row.text for row in page.find_elements(By.CSS_SELECTOR, "#listing tbody td:last-child")]
    assert names[:2] == ['"caf\\351 <b>x<" ⤓', "data.bin ⤓"] and "etc/" in names and "home/" in names, names
    snap(page, "06-directory")
    odd_link = page.find_element(By.XPATH, "//td/a[starts-with(text(), '\"caf')]/following-sibling::a").get_attribute("href")
    follow(page, page.find_element(By.LINK_TEXT, "etc/"))
    follow(page, page.find_element(By.LINK_TEXT, "hosts"))
    assert page.find_element(By.ID, "content").text == "10.0.0.1 changed"
    snap(page, "07-file")

    with session(server, page.get_cookie("vml_session")["value"]) as client:  # downloads: the browser's own cookie
        assert client.get(odd_link).content == b"odd\n"
        page.get(f"{server.url}/alice/e/{newest}/file/data.bin")
        assert page.find_element(By.ID, "binary")
        download = client.get(page.find_element(By.ID, "download").get_attribute("href"))
        assert download.content == data and download.headers["content-type"] == "application/octet-stream"
        assert download.headers["content-disposition"] == "attachment; filename*=UTF-8''data.bin"

        page.get(f"{server.url}/alice")
        Select(page.find_element(By.ID, "old")).select_by_value(oldest)
        Select(page.find_element(By.ID, "new")).select_by_value(newest)
        follow(page, page.find_element(By.ID, "compare-button"))
        assert page.find_element(By.ID, "name-status").find_element(By.CSS_SELECTOR, "tbody tr").text == "M etc/hosts content, mtime"
        removed = [e.text for e in page.find_elements(By.CSS_SELECTOR, "pre.patch .del")]
        added = [e.text for e in page.find_elements(By.CSS_SELECTOR, "pre.patch .add")]
        assert removed == ["-127.0.0.1 alice"] and added == ["+10.0.0.1 changed"]
        snap(page, "08-diff")

        page.get(f"{server.url}/alice/e/{newest}")
        bundle = tmp_path / "alice.vmlb"
        bundle.write_bytes(client.get(page.find_element(By.ID, "bundle").get_attribute("href")).content)
    elsewhere = Vml(tmp_path / "elsewhere")
    elsewhere.cwd.mkdir()
    elsewhere("init")
    imported = elsewhere("import", str(bundle), "--json").json()
    assert imported["entry"] == newest and imported["ref"] == "main" and imported["commits"] == 2  # main's, not side's
    assert entry_ids(elsewhere, {}, "--all") == [newest, oldest]
    elsewhere("checkout", "main", "--to", str(tmp_path / "restored"))
    assert (tmp_path / "restored" / "data.bin").read_bytes() == data
    elsewhere.fsck_clean()

    follow(page, page.find_element(By.ID, "logout"))
    assert "/login" in page.current_url and page.get_cookie("vml_session") is None
    page.get(f"{server.url}/alice/e/{newest}")
    assert "/login" in page.current_url


def test_others_see_only_public_entries(tmp_path, server, page):
    alice, guest, env = user_repository(tmp_path, server, "alice")
    (guest / "etc" / "app.conf").write_text("password=hunter2-very-secret\n")
    alice("commit", "-m", "private", env=env)
    alice("publish", "main", env=env)
    alice("push", "origin", "main", "public/main", env=env)
    private, = entry_ids(alice, env, "main")
    public, = entry_ids(alice, env, "public/main")
    carol, _guest, carol_env = user_repository(tmp_path, server, "carol")
    carol("commit", "-m", "carol's own", env=carol_env)
    carol("push", env=carol_env)
    carols, = entry_ids(carol, carol_env)
    server.add_user("bob")

    with session(server, server.tokens["bob"]) as bob:
        home = bob.get("/").text
        assert 'href="/alice"' in home and "carol" not in home
        namespace = bob.get("/alice")
        assert namespace.status_code == 200 and public in namespace.text and private not in namespace.text
        assert private not in bob.get("/alice/graph").text
        entry = bob.get(f"/alice/e/{public}")
        assert entry.status_code == 200 and "Scrub report" in entry.text
        assert bob.get(f"/alice/e/{public}/raw/etc/hosts").content == b"127.0.0.1 alice\n"
        not_found = bob.get(f"/alice/e/{'0' * 40}")
        assert not_found.status_code == 404
        for url in (f"/alice/e/{private}", f"/alice/e/{private}/tree/", f"/alice/e/{private}/file/etc/hosts",
                    f"/alice/e/{private}/raw/etc/hosts", f"/alice/e/{private}/bundle", f"/alice/diff?old={private}&new={public}",
                    f"/alice/e/{carols}", f"/carol/e/{carols}", f"/alice/e/{private[:12]}", "/alice/e/HEAD"):
            refused = bob.get(url)
            assert (refused.status_code, refused.text) == (404, not_found.text), url  # no existence oracle
        assert bob.get("/carol").text == bob.get("/nobody").text == not_found.text

    log_in(page, server, "bob")
    page.get(f"{server.url}/alice")
    snap(page, "09-public-namespace")
    page.get(f"{server.url}/alice/e/{public}")
    assert "Scrub report" in page.page_source
    snap(page, "10-public-entry")
    page.get(f"{server.url}/alice/e/{private}")
    assert page.find_element(By.TAG_NAME, "h1").text == "Not found"
    snap(page, "11-not-found")

    with session(server, None) as anonymous:  # this server does not serve anonymous callers
        for url in ("/", "/alice", f"/alice/e/{public}"):
            sent = anonymous.get(url)
            assert sent.status_code == 303 and sent.headers["location"].startswith("/login?next="), url

    from support.server import start_server

    open_server = start_server(tmp_path / "open", "--anonymous-public", repo=server.repo)  # the same repository
    try:
        with session(open_server, None) as anonymous:
            home = anonymous.get("/").text
            assert 'href="/alice"' in home and "carol" not in home
            assert anonymous.get(f"/alice/e/{public}").status_code == 200
            assert anonymous.get(f"/alice/e/{private}").status_code == 404
            assert anonymous.get("/carol").status_code == 404
    finally:
        open_server.stop()


def test_paths_in_urls_stay_inside_the_entry(tmp_path, server):
    alice, guest, env = user_repository(tmp_path, server, "alice")
    (guest / os.fsdecode(ODD_NAME)).write_bytes(b"odd\n")
    (guest / "link").symlink_to("../../etc/shadow")
    alice("commit", "-m", "names", env=env)
    alice("push", env=env)
    entry, = entry_ids(alice, env)
    with session(server, server.tokens["alice"]) as client:
        listing = client.get(f"/alice/e/{entry}/tree/").text
        assert "&#34;caf\\351 &lt;b&gt;x&lt;&#34;" in listing and "<b>" not in listing
        assert f'href="/alice/e/{entry}/raw/caf%E9%20%3Cb%3Ex%3C"' in listing
        assert client.get(f"/alice/e/{entry}/raw/caf%E9%20%3Cb%3Ex%3C").content == b"odd\n"
        assert "../../etc/shadow" in client.get(f"/alice/e/{entry}/file/link").text
        assert client.get(f"/alice/e/{entry}/raw/link").status_code == 404  # a symlink is not followed
        for url in ("raw/..%2f..%2fetc%2fpasswd", "raw/%2e%2e/%2e%2e/etc/passwd", "raw/etc%2fhosts", "raw//etc/hosts",
                    "raw/etc/%2e/hosts", "tree/etc/%00", "file/%2Fetc%2Fhosts"):
            response = client.get(httpx.URL(f"{server.url}/alice/e/{entry}/{url}"))
            assert response.status_code == 400, (url, response.status_code)
        assert client.get(f"/alice/e/{entry}/raw/nothing/here").status_code == 404
        assert client.get(f"/alice/e/{entry}/tree/etc/hosts", follow_redirects=False).headers["location"] == f"/alice/e/{entry}/file/etc/hosts"


def test_forms_need_their_token_and_this_site(server):
    token = server.add_user("alice")
    with session(server, None) as client:
        form = client.get("/login")
        nonce = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
        assert "httponly" in form.headers["set-cookie"].lower() and "samesite=strict" in form.headers["set-cookie"].lower()
        foreign = client.post("/login", data={"csrf": nonce, "token": token, "next": "/"}, headers={"Origin": "http://evil.example"})
        assert foreign.status_code == 403 and "vml_session" not in client.cookies
        client.cookies.delete("vml_login")
        assert client.post("/login", data={"csrf": nonce, "token": token}).status_code == 403  # no form of ours was loaded
        nonce = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
        wrong = client.post("/login", data={"csrf": nonce, "token": "vml_aaaaaaaaaaaa_" + "b" * 43})
        assert wrong.status_code == 401 and "not valid" in wrong.text
        nonce = re.search(r'name="csrf" value="([^"]+)"', wrong.text).group(1)
        done = client.post("/login", data={"csrf": nonce, "token": token, "next": "//evil.example/"})
        assert done.status_code == 303 and done.headers["location"] == "/"  # never to another site
        cookie = done.headers["set-cookie"].lower()
        assert "vml_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie

        logout_token = re.search(r'name="csrf" value="([^"]+)"', client.get("/").text).group(1)
        assert client.post("/logout", data={}).status_code == 403
        assert client.post("/logout", data={"csrf": logout_token}, headers={"Origin": "http://evil.example"}).status_code == 403
        assert client.get("/").status_code == 200  # still logged in
        out = client.post("/logout", data={"csrf": logout_token}, headers={"Origin": server.url})
        assert out.status_code == 303 and "vml_session" not in client.cookies

    server.accounts().revoke_token(token)
    with session(server, token) as revoked:
        sent = revoked.get("/alice")
        assert sent.status_code == 303 and sent.headers["location"] == "/login?next=/alice"
        assert 'vml_session=""' in sent.headers["set-cookie"]


def test_a_large_directory_is_paged(tmp_path, server, page):
    alice, guest, env = user_repository(tmp_path, server, "alice")
    many = guest / "many"
    many.mkdir()
    for number in range(5000):
        (many / f"file-{number:05}").write_bytes(b"")
    alice("commit", "-m", "5,000 files in one directory", env=env)
    alice("push", env=env)
    entry, = entry_ids(alice, env)
    with session(server, server.tokens["alice"]) as client:
        client.get(f"/alice/e/{entry}/tree/")  # (the server's first look at the token)
        for number in (0, 9):
            started = time.monotonic()
            listing = client.get(f"/alice/e/{entry}/tree/many?page={number}")
            elapsed = time.monotonic() - started
            assert listing.status_code == 200 and elapsed < 2, elapsed
            assert listing.text.count('<tr class="file">') == DIRECTORY_PAGE and len(listing.content) < 400_000
            assert f"file-{number * DIRECTORY_PAGE:05}" in listing.text and f"page {number + 1} of 10" in listing.text
        assert 'id="next"' not in listing.text
        assert client.get(f"/alice/e/{entry}/tree/many?page=10").text.count('<tr class="file">') == 0
    log_in(page, server, "alice")
    page.get(f"{server.url}/alice/e/{entry}/tree/many")
    assert page.find_element(By.ID, "count").text == "5,000 names, page 1 of 10"
    follow(page, page.find_element(By.ID, "next"))
    assert page.find_elements(By.CSS_SELECTOR, "#listing tr.file")[0].text.endswith(f"file-{DIRECTORY_PAGE:05} ⤓")
    snap(page, "12-large-directory")
