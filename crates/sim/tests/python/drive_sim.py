"""Drives the Puhuri Core simulator with python-waldur-client 0.6.4, Waldur's own Python SDK.

Every endpoint the service calls goes through the client's own methods where it has one, and
through its raw helpers (`_get`, `_get_all`, `_post`, which add the same token header and
trailing slashes) where it has none. Each answer is checked; any mismatch raises, so the
process exits non-zero.

Input (environment, never argv):
- `WALDUR_TOKEN`: the API token.
- `DRIVE_SIM`: JSON with `api_url`, `scenario` (`current` or `2021`), the uuids of the
  allocations prepared for each step, and for `current` `expect` (how this Waldur version
  answers `set_as_erred`).

The write calls happen in a fixed order; the caller compares the server's record of them.
"""

import datetime
import decimal
import json
import os
import signal
import sys

import waldur_client
from waldur_client import WaldurClient, WaldurClientException

# A client call that hangs must not hang the test run.
signal.alarm(120)

EXPECTED_VERSION = "0.6.4"


def step(text):
    print(f"-- {text}", flush=True)


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def fails_with(status, call, *args, **kwargs):
    """Runs `call`; it must raise the client's error naming `status`. Returns the message."""
    try:
        result = call(*args, **kwargs)
    except WaldurClientException as error:
        text = str(error)
        check(f"Status: {status}." in text, f"expected HTTP {status}, got: {text}")
        return text
    raise AssertionError(f"expected HTTP {status}, got success: {result!r}")


def installed_version():
    from importlib import metadata

    return metadata.version("python-waldur-client")


class Driver:
    def __init__(self, config, token):
        self.config = config
        self.client = WaldurClient(config["api_url"], token)

    def url(self, *parts):
        return self.client._build_url("/".join(parts))

    # ----- shared by both generations -----

    def who_am_i(self):
        step("users/me")
        me = self.client.get_current_user()
        check(me["username"] == self.config["username"], f"users/me: {me!r}")
        check(me["is_staff"] is False, "the integration user is not staff")
        owner_of = {
            p["scope_uuid"]
            for p in me["permissions"]
            if p["role_name"] == "CUSTOMER.OWNER" and p["scope_type"] == "customer"
        }
        check(
            self.config["provider_uuid"] in owner_of,
            f"users/me names no owner role on the provider: {me['permissions']!r}",
        )
        # The start-up probe's form: field selection.
        fields = ["uuid", "username", "is_staff", "permissions"]
        picked = self.client._get(
            self.url("users", "me"), valid_states=[200], params={"field": fields}
        )
        check(set(picked) == set(fields), f"users/me with field=: {sorted(picked)!r}")
        check(picked["uuid"] == me["uuid"], "users/me uuid differs between calls")

    def customer(self, allocation):
        step("customers/{uuid}: the provider's own organisation only, a consumer's is 404")
        own = self.client.get_customer(self.config["provider_uuid"])
        check(own["uuid"] == self.config["provider_uuid"], f"own organisation: {own!r}")
        fails_with(404, self.client.get_customer, allocation["customer_uuid"])

    def probe(self, current):
        """The start-up probe: the API generation and the offerings the provider manages."""
        step("probe: API generation and managed offerings")
        c = self.client
        generation = self.url("marketplace-provider-resources")
        params = {"page_size": 1, "field": ["uuid"]}
        if current:
            page = c._get(generation, valid_states=[200], params=params)
            check(isinstance(page, list) and len(page) <= 1, f"probe page: {page!r}")
        else:
            fails_with(404, c._get, generation, valid_states=[200], params=params)
        fields = ["uuid", "name", "type", "customer_uuid"]
        filters = {"customer_uuid": self.config["provider_uuid"], "field": fields}
        if current:
            offerings = c.list_marketplace_provider_offerings(filters)
        else:
            offerings = c._get_all(self.url("marketplace-offerings"), params=filters)
        check(all(set(o) == set(fields) for o in offerings), f"offerings: {offerings!r}")
        check(
            all(o["customer_uuid"] == self.config["provider_uuid"] for o in offerings),
            "offerings of another organisation",
        )
        managed = {o["uuid"] for o in offerings}
        want = set(self.config["offerings"].values())
        check(want <= managed, f"managed offerings {sorted(managed)!r} lack {sorted(want - managed)!r}")

    def provider_customers(self, allocations):
        step("the provider's customers with their abbreviations")
        c = self.client
        providers = c.list_service_providers(
            {"customer_uuid": self.config["provider_uuid"], "field": ["uuid"]}
        )
        check(
            len(providers) == 1 and set(providers[0]) == {"uuid"},
            f"service providers of the organisation: {providers!r}",
        )
        listed = c._get_all(
            c._build_resource_url("marketplace-service-providers", providers[0]["uuid"], "customers"),
            params={"page_size": 100},
        )
        got = {item["uuid"]: item["abbreviation"] for item in listed}
        abbreviations = self.config["abbreviations"]
        want = {a["customer_uuid"]: abbreviations[a["customer_uuid"]] for a in allocations}
        check(got == want, f"provider customers {got!r}, expected {want!r}")

    def wrong_token(self):
        step("a wrong token answers 401")
        stranger = WaldurClient(self.config["api_url"], "not-the-token")
        fails_with(401, stranger.get_current_user)

    # ----- the current API (orders) -----

    def current(self):
        c = self.client
        cfg = self.config
        approve = cfg["approve"]
        reject = cfg["reject"]
        reject_comment = cfg["reject_comment"]
        slurm = cfg["slurm_erred"]
        resource_erred = cfg["resource_erred"]
        expired = cfg["expired"]
        consumer = cfg["pending_consumer"]
        basic = cfg["offerings"]["basic"]
        pending = [approve, reject, reject_comment, slurm, resource_erred, expired]

        self.wrong_token()
        self.who_am_i()
        self.probe(current=True)

        step("list pending orders across pages (Link rel=next)")
        filters = {
            "state": "pending-provider",
            "type": "Create",
            "page_size": 2,
            "field": ["uuid", "marketplace_resource_uuid"],
        }
        orders_url = self.url("marketplace-orders")
        count = c._get_count(orders_url, params=dict(filters))
        check(count == len(pending), f"X-Result-Count {count}, expected {len(pending)}")
        check(count > 2 * 2, "the pending list must span more than two pages")
        listed = c.list_orders(dict(filters))
        check(
            sorted((o["uuid"], o["marketplace_resource_uuid"]) for o in listed)
            == sorted((a["order_uuid"], a["resource_uuid"]) for a in pending),
            f"pending orders: {listed!r}",
        )
        check(
            all(set(o) == {"uuid", "marketplace_resource_uuid"} for o in listed),
            "field= selection was not applied",
        )
        check(
            consumer["order_uuid"] not in {o["uuid"] for o in listed},
            "a pending-consumer order is not pending-provider",
        )
        on_basic = c.list_orders(
            {"state": "pending-provider", "type": "Create", "offering_uuid": basic}
        )
        check(
            {o["uuid"] for o in on_basic}
            == {a["order_uuid"] for a in pending if a["offering_uuid"] == basic},
            "offering_uuid filter",
        )

        step("get order and provider resource")
        order = c.get_order(approve["order_uuid"])
        check(order["state"] == "pending-provider", f"order state {order['state']}")
        check(order["type"] == "Create", f"order type {order['type']}")
        check(order["marketplace_resource_uuid"] == approve["resource_uuid"], "order names its resource")
        check(order["offering_type"] == "Marketplace.Basic", "offering type")
        resource = c.get_marketplace_provider_resource(approve["resource_uuid"])
        check(resource["state"] == "Creating", f"resource state {resource['state']}")
        check(resource["creation_order"]["uuid"] == approve["order_uuid"], "creation_order")
        check(resource["limits"].get("cpu_k_hours") == 100, f"limits {resource['limits']!r}")

        self.customer(approve)
        self.provider_customers(pending + [consumer])

        step("team")
        team = c.marketplace_provider_resource_get_team(approve["resource_uuid"])
        check(isinstance(team, list) and team, f"team: {team!r}")
        usernames = {m["username"] for m in team}
        check(cfg["member"] in usernames, f"team members {sorted(usernames)!r}")

        step("granted allocations of the organisation (none yet)")
        granted_filters = {
            "customer_uuid": approve["customer_uuid"],
            "state": ["OK", "Updating"],
            "page_size": 100,
            "field": ["uuid", "project_uuid", "limits"],
        }
        granted = c.filter_marketplace_provider_resources(dict(granted_filters))
        check(granted == [], f"nothing is granted yet: {granted!r}")

        step("set backend_id (idempotent) and approve")
        answer = c.marketplace_provider_resource_set_backend_id(approve["resource_uuid"], "lumi-approve")
        check(answer == {"status": "Resource backend_id has been changed."}, f"set_backend_id: {answer!r}")
        answer = c.marketplace_provider_resource_set_backend_id(approve["resource_uuid"], "lumi-approve")
        check(answer == {"status": "Resource backend_id is not changed."}, f"set_backend_id again: {answer!r}")
        check(c.marketplace_order_approve_by_provider(approve["order_uuid"]) == "", "approve answers no body")
        check(c.get_order(approve["order_uuid"])["state"] == "done", "a Basic order is done once approved")
        resource = c.get_marketplace_provider_resource(approve["resource_uuid"])
        check(resource["state"] == "OK", f"approved resource state {resource['state']}")
        check(resource["backend_id"] == "lumi-approve", "backend_id kept")

        step("access report")
        report = [{"header": "Login node", "body": "ssh user@lumi.example.org"}]
        answer = c.marketplace_provider_resource_submit_report(approve["resource_uuid"], report)
        check(answer == {"status": "Report is submitted"}, f"submit_report: {answer!r}")
        resource = c.get_marketplace_provider_resource(approve["resource_uuid"])
        check(resource["report"] == report, f"stored report: {resource['report']!r}")

        step("approved and granted lists, find by backend_id, HEAD count")
        approved = c.filter_marketplace_provider_resources(
            {
                "state": ["OK", "Updating"],
                "page_size": 100,
                "field": ["uuid", "backend_id", "project_uuid", "project_name", "offering_uuid"],
            }
        )
        check(
            {(r["uuid"], r["backend_id"]) for r in approved}
            == {(approve["resource_uuid"], "lumi-approve")},
            f"approved: {approved!r}",
        )
        on_offering = c.list_marketplace_provider_resources(
            state="OK", offering_uuid=basic, fields=["uuid", "backend_id"]
        )
        check([r["uuid"] for r in on_offering] == [approve["resource_uuid"]], "approved on the offering")
        granted = c.filter_marketplace_provider_resources(dict(granted_filters))
        check(
            [(g["uuid"], g["project_uuid"], g["limits"].get("cpu_k_hours")) for g in granted]
            == [(approve["resource_uuid"], approve["project_uuid"], 100)],
            f"granted: {granted!r}",
        )
        found = c.filter_marketplace_provider_resources({"backend_id": "lumi-approve", "page_size": 10})
        check([r["uuid"] for r in found] == [approve["resource_uuid"]], f"by backend_id: {found!r}")
        check(c.count_marketplace_provider_resources(params={"state": "OK"}) == 1, "HEAD count")

        step("offering components and usage")
        offering = c.get_marketplace_provider_offering(basic)
        billing = {comp["type"]: comp["billing_type"] for comp in offering["components"]}
        check(billing.get("cpu_k_hours") == "limit", f"components: {billing!r}")
        answer = c.create_component_usages(
            resource_uuid=approve["resource_uuid"],
            usages=[{"type": "cpu_k_hours", "amount": "10.50", "description": "month to date"}],
        )
        check(answer == "", f"set_usage answers 201 without a body: {answer!r}")
        period = datetime.datetime.now(datetime.timezone.utc).date().replace(day=1).isoformat()
        usages = c.list_component_usages(approve["resource_uuid"], billing_period=period)
        check(len(usages) == 1, f"usages: {usages!r}")
        usage = usages[0]
        check(usage["type"] == "cpu_k_hours", "usage component")
        check(decimal.Decimal(usage["usage"]) == decimal.Decimal("10.5"), f"usage amount {usage['usage']}")
        check(usage["billing_period"] == period, f"billing period {usage['billing_period']}")
        c.create_component_user_usage(usage["uuid"], "4.25", cfg["member"])
        user_usages = c._get_all(
            self.url("marketplace-component-user-usages"),
            params={
                "resource_uuid": approve["resource_uuid"],
                "type": "cpu_k_hours",
                "page_size": 100,
            },
        )
        check(
            [(u["username"], decimal.Decimal(u["usage"])) for u in user_usages]
            == [(cfg["member"], decimal.Decimal("4.25"))],
            f"user usages: {user_usages!r}",
        )

        step("reject: the client's own call (no body), then with a comment")
        check(c.marketplace_order_reject_by_provider(reject["order_uuid"]) == "", "reject answers no body")
        check(c.get_order(reject["order_uuid"])["state"] == "rejected", "rejected order")
        rejected = c.get_marketplace_provider_resource(reject["resource_uuid"])
        check(rejected["state"] == "Terminated", f"rejected resource {rejected['state']}")
        c._post(
            c._build_resource_url("marketplace-orders", reject_comment["order_uuid"], "reject_by_provider"),
            valid_states=[200],
            json={"provider_rejection_comment": "Requested limits exceed the call's maximum."},
        )
        check(c.get_order(reject_comment["order_uuid"])["state"] == "rejected", "rejected with a comment")

        step("erred: order set_state_erred (Slurm 200, Basic 405)")
        fails_with(405, c.marketplace_order_set_state_erred, resource_erred["order_uuid"], "no", "")
        check(
            c.marketplace_order_set_state_erred(slurm["order_uuid"], "Cannot create the account.", "") == "",
            "set_state_erred answers no body",
        )
        erred = c.get_order(slurm["order_uuid"])
        check(erred["state"] == "erred", f"erred order {erred['state']}")
        check(erred["error_message"] == "Cannot create the account.", "error message kept")

        step("erred: provider resource set_as_erred")
        c.marketplace_provider_resource_set_backend_id(resource_erred["resource_uuid"], "lumi-erred")
        want = cfg["expect"]["set_as_erred"]
        details = {"error_message": "Quota backend refused.", "error_traceback": ""}
        if want["status"] == 200:
            c.marketplace_provider_resource_set_as_erred(resource_erred["resource_uuid"], details)
        else:
            fails_with(want["status"], c.marketplace_provider_resource_set_as_erred, resource_erred["resource_uuid"], details)
        after = c.get_order(resource_erred["order_uuid"])
        check(after["state"] == want["order_state"], f"order after set_as_erred: {after['state']}")
        after = c.get_marketplace_provider_resource(resource_erred["resource_uuid"])
        check(after["state"] == want["resource_state"], f"resource after set_as_erred: {after['state']}")

        step("approving an order of an expired project answers 400")
        text = fails_with(400, c.marketplace_order_approve_by_provider, expired["order_uuid"])
        check("is expired" in text, f"expired project message: {text}")

        step("a missing object answers 404")
        fails_with(404, c.get_order, "0" * 32)

    # ----- the 2021 API (resources) -----

    def api_2021(self):
        c = self.client
        cfg = self.config
        approve = cfg["approve"]
        terminate = cfg["terminate"]
        erred = cfg["erred"]
        basic = cfg["offerings"]["basic"]
        creating = [approve, terminate, erred]

        self.wrong_token()
        self.who_am_i()
        self.probe(current=False)

        step("list Creating resources across pages")
        filters = {"state": "Creating", "page_size": 2, "field": ["uuid"]}
        count = c._get_count(self.url("marketplace-resources"), params=dict(filters))
        check(count == len(creating), f"X-Result-Count {count}")
        listed = c.filter_marketplace_resources(dict(filters))
        check(
            sorted(r["uuid"] for r in listed) == sorted(a["resource_uuid"] for a in creating),
            f"Creating resources: {listed!r}",
        )
        check(all(set(r) == {"uuid"} for r in listed), "field= selection was not applied")
        on_basic = c.list_marketplace_resources(state="Creating", offering_uuid=basic, fields=["uuid"])
        check(len(on_basic) == len(creating), "offering filter")

        step("get resource and offering")
        resource = c.get_marketplace_resource(approve["resource_uuid"])
        check(resource["state"] == "Creating", f"resource state {resource['state']}")
        offering = c._get(self.url("marketplace-offerings", basic), valid_states=[200])
        check(
            "cpu_k_hours" in {comp["type"] for comp in offering["components"]},
            "offering components",
        )

        self.customer(approve)
        self.provider_customers(creating)

        step("team")
        team = c._get(
            c._build_resource_url("marketplace-resources", approve["resource_uuid"], "team"),
            valid_states=[200],
        )
        check(cfg["member"] in {m["username"] for m in team}, f"team: {team!r}")

        def post(resource_uuid, action, body):
            return c._post(
                c._build_resource_url("marketplace-resources", resource_uuid, action),
                valid_states=[200],
                json=body,
            )

        step("set backend_id, state ok, report")
        answer = post(approve["resource_uuid"], "set_backend_id", {"backend_id": "lumi-2021"})
        check(answer == {"status": "Resource backend_id has been changed."}, f"set_backend_id: {answer!r}")
        answer = post(approve["resource_uuid"], "set_state_by_provider", {"state": "ok"})
        check(answer == {"status": "Resource state has been changed."}, f"set_state ok: {answer!r}")
        check(c.get_marketplace_resource(approve["resource_uuid"])["state"] == "OK", "resource OK")
        report = [{"header": "Login node", "body": "ssh user@lumi.example.org"}]
        answer = post(approve["resource_uuid"], "submit_report", {"report": report})
        check(answer == {"status": "Report is submitted"}, f"submit_report: {answer!r}")

        step("state terminated and erred")
        post(terminate["resource_uuid"], "set_state_by_provider", {"state": "terminated"})
        check(
            c.get_marketplace_resource(terminate["resource_uuid"])["state"] == "Terminated",
            "terminated",
        )
        post(erred["resource_uuid"], "set_backend_id", {"backend_id": "lumi-2021-erred"})
        post(erred["resource_uuid"], "set_state_by_provider", {"state": "erred"})
        check(c.get_marketplace_resource(erred["resource_uuid"])["state"] == "Erred", "erred")

        step("approved list and find by backend_id")
        approved = c.filter_marketplace_resources(
            {"state": ["OK", "Updating"], "page_size": 100, "field": ["uuid", "backend_id"]}
        )
        check(
            [(r["uuid"], r["backend_id"]) for r in approved] == [(approve["resource_uuid"], "lumi-2021")],
            f"approved: {approved!r}",
        )
        found = c.filter_marketplace_resources({"backend_id": "lumi-2021", "page_size": 10})
        check([r["uuid"] for r in found] == [approve["resource_uuid"]], "by backend_id")


def main():
    version = installed_version()
    check(version == EXPECTED_VERSION, f"python-waldur-client {version}, expected {EXPECTED_VERSION}")
    token = os.environ.get("WALDUR_TOKEN", "")
    check(token != "", "WALDUR_TOKEN is not set")
    config = json.loads(os.environ["DRIVE_SIM"])
    driver = Driver(config, token)
    print(f"python-waldur-client {version} from {waldur_client.__file__}", flush=True)
    scenario = config["scenario"]
    if scenario == "current":
        driver.current()
    elif scenario == "2021":
        driver.api_2021()
    else:
        raise AssertionError(f"unknown scenario {scenario!r}")
    print("OK", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as error:
        print(f"FAILED: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
