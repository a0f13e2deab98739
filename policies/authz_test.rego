# opa test policies/ (run from pytest by tests/integration/test_policy_rego.py).
# Tests replace data.agentcluster.tenants with their own, so the committed tenant files do not
# change their outcome, except the test that checks the example tenant file is loaded.
package agentcluster.authz_test

import data.agentcluster.authz
import rego.v1

tenants := {
	"t1": {
		"agents": ["support", "research*"],
		"tools": {"allow": ["*"], "deny": ["mcp.admin.*"]},
		"agent_tools": {"support": {"allow": ["http_fetch", "browser_*", "mcp.files.*"], "deny": ["browser_task"]}},
		"deny_actions": ["session.delete"],
		"limits": {"python_exec_max_code_bytes": 10, "url_schemes": ["https"]},
		"network": {
			"allow_hosts": ["*.corp.test", "localhost"],
			"allow_cidrs": ["127.0.0.1/32", "10.1.0.0/16"],
			"allow_metadata": ["169.254.169.254"],
		},
	},
	"narrow": {"tools": {"allow": ["browser_*"]}, "network": {"allow_public": false, "allow_hosts": ["docs.test"]}},
	"broken": {"tools": "not an object"},
	"ports": {"network": {"allow_ports": [8443]}},
	"badports": {"network": {"allow_ports": ["80"]}},
	"careful": {"approvals": [
		{"tools": ["python_exec"], "reason": "code runs on our machines"},
		{"tools": ["http_fetch", "browser_navigate"], "argument": "url", "match": ["https://pay.test/*"]},
	]},
	"badrules": {"approvals": [{"tools": ["x"], "argument": "url"}]},
	"roles": {"action_roles": {"session.approve": ["approver", "admin"]}},
	"badroles": {"action_roles": {"session.approve": "approver"}},
}

tool(tenant, agent, name, arguments) := {
	"kind": "tool", "tenant": tenant, "agent": agent, "session": "s1",
	"tool": name, "arguments": arguments,
}

net(tenant, host, ip, category) := {
	"kind": "network", "tenant": tenant, "agent": "support", "tool": "http_fetch",
	"target": {"scheme": "https", "host": host, "ip": ip, "port": 80, "category": category},
}

api(tenant, action, agent, admin) := {"kind": "api", "tenant": tenant, "action": action, "agent": agent, "admin": admin}

decide(request) := d if {
	d := authz.decision with input as request with data.agentcluster.tenants as tenants
}

allowed(request) if decide(request).allowed == true

reason(request) := decide(request).reason

# ---------------------------------------------------------------- shape of the decision

test_decision_is_object_with_allowed_and_reason if {
	d := decide(tool("t0", "a", "http_fetch", {"url": "https://x.test/"}))
	object.keys(d) == {"allowed", "reason"}
	is_boolean(d.allowed)
	is_string(d.reason)
}

test_allow_reason_names_tool_agent_and_tenant if {
	reason(tool("t0", "a", "http_fetch", {"url": "https://x.test/"})) == "tool http_fetch is allowed for agent a in tenant t0"
}

test_unknown_kind_denied if {
	not allowed({"kind": "exec", "tenant": "t0"})
	reason({"kind": "exec", "tenant": "t0"}) == "unknown policy input kind \"exec\"; expected one of api, network, tool"
}

test_non_string_kind_denied if {
	not allowed({"kind": 3, "tenant": "t0"})
	contains(reason({"kind": 3, "tenant": "t0"}), "unknown policy input kind 3")
}

test_missing_kind_denied if {
	not allowed({"tenant": "t0"})
	reason({"tenant": "t0"}) == "policy input has no kind; expected one of api, network, tool"
}

test_empty_input_denied if not allowed({})

test_missing_tenant_denied if {
	request := object.remove(tool("x", "a", "http_fetch", {"url": "https://x.test/"}), ["tenant"])
	not allowed(request)
	contains(reason(request), "policy input has no tenant")
}

test_empty_tenant_denied if not allowed(tool("", "a", "http_fetch", {"url": "https://x.test/"}))

test_missing_agent_denied if {
	request := object.remove(tool("t0", "a", "http_fetch", {"url": "https://x.test/"}), ["agent"])
	not allowed(request)
	contains(reason(request), "tool request has no agent")
}

test_several_denials_joined_sorted if {
	r := reason(tool("t1", "support", "python_exec", {"code": "print('hello world')"}))
	r == concat("; ", [
		"python_exec code is 20 bytes; tenant t1 allows at most 10",
		"tool python_exec is not allowed for agent support in tenant t1",
	])
}

# ---------------------------------------------------------------- tools: defaults

test_default_tenant_allows_any_tool if {
	allowed(tool("t0", "a", "python_exec", {"code": "1"}))
	allowed(tool("t0", "a", "mcp.files.read", {}))
	allowed(tool("t0", "a", "browser_click", {"index": 1}))
}

test_default_tenant_denies_browser_evaluate if {
	request := tool("t0", "a", "browser_evaluate", {})
	not allowed(request)
	contains(reason(request), "tool browser_evaluate is denied in tenant t0 (rule browser_evaluate)")
}

test_missing_tool_denied if {
	request := object.remove(tool("t0", "a", "x", {}), ["tool"])
	not allowed(request)
	contains(reason(request), "tool request has no tool")
}

test_non_object_arguments_denied if {
	not allowed(tool("t0", "a", "browser_click", [1]))
	contains(reason(tool("t0", "a", "browser_click", [1])), "arguments must be an object")
}

test_default_agent_tools_apply_to_all_tenants if {
	d := decide(tool("t0", "kiosk", "python_exec", {"code": "1"})) with data.agentcluster.defaults.agent_tools as {"kiosk": {"deny": ["python_*"]}}
	d.allowed == false
	d.reason == "tool python_exec is denied for agent kiosk in tenant t0 (rule python_*)"
}

test_tenant_agent_entry_replaces_default_agent_entry if {
	request := tool("t1", "support", "http_fetch", {"url": "https://x.test/"})
	d := decide(request) with data.agentcluster.defaults.agent_tools as {"support": {"allow": []}}
	d.allowed == true
}

# ---------------------------------------------------------------- tools: tenant and agent lists

test_tenant_deny_glob if {
	not allowed(tool("t1", "research", "mcp.admin.drop", {}))
	reason(tool("t1", "research", "mcp.admin.drop", {})) == "tool mcp.admin.drop is denied in tenant t1 (rule mcp.admin.*)"
}

test_glob_star_crosses_dots if allowed(tool("t1", "support", "mcp.files.read.deep", {}))

test_agent_allow_list if {
	allowed(tool("t1", "support", "browser_click", {"index": 3}))
	allowed(tool("t1", "support", "mcp.files.read", {}))
	not allowed(tool("t1", "support", "mcp.git.log", {}))
	reason(tool("t1", "support", "mcp.git.log", {})) == "tool mcp.git.log is not allowed for agent support in tenant t1"
}

test_agent_deny_beats_agent_allow if {
	not allowed(tool("t1", "support", "browser_task", {"task": "x"}))
	reason(tool("t1", "support", "browser_task", {"task": "x"})) == "tool browser_task is denied for agent support in tenant t1 (rule browser_task)"
}

test_other_agent_of_tenant_unrestricted if allowed(tool("t1", "research-2", "mcp.git.log", {}))

test_tenant_allow_list if {
	allowed(tool("narrow", "a", "browser_state", {}))
	not allowed(tool("narrow", "a", "python_exec", {"code": "1"}))
	reason(tool("narrow", "a", "python_exec", {"code": "1"})) == "tool python_exec is not allowed in tenant narrow"
}

test_malformed_tenant_tools_deny if {
	not allowed(tool("broken", "a", "browser_state", {}))
	reason(tool("broken", "a", "browser_state", {})) == concat("; ", [
		"policy data for tenant broken is malformed at tools; an operator must fix it",
		"tool browser_state is not allowed in tenant broken",
	])
	not allowed(api("broken", "session.read", null, false))
}

test_malformed_lists_deny_instead_of_being_ignored if {
	bad := {"bad": {
		"tools": {"deny": "python_exec"},
		"agents": "support",
		"agent_tools": {"a": {"allow": ["*"], "deny": [1]}},
		"network": {"allow_cidrs": "127.0.0.1/32", "allow_public": "yes"},
		"limits": {"python_exec_max_code_bytes": "10", "url_schemes": ["https"]},
	}}
	d := authz.decision with input as tool("bad", "a", "python_exec", {"code": "1"}) with data.agentcluster.tenants as bad
	d.allowed == false
	contains(d.reason, concat("", [
		"policy data for tenant bad is malformed at agent_tools.a.deny, agents, ",
		"limits.python_exec_max_code_bytes, network.allow_cidrs, network.allow_public, tools.deny;",
	]))
	m := authz.decision with input as api("bad", "session.read", null, false) with data.agentcluster.tenants as {"bad": {"agent_tools": {"a": "x"}}}
	m.allowed == true
	n := authz.decision with input as tool("bad", "a", "x", {}) with data.agentcluster.tenants as {"bad": {"agent_tools": {"a": "x"}}}
	contains(n.reason, "malformed at agent_tools.a;")
}

test_committed_data_is_well_formed if {
	every tenant in ["example", "someone-else"] {
		d := authz.decision with input as tool(tenant, "research", "browser_state", {})
		not contains(d.reason, "malformed")
	}
}

test_agent_not_available_to_tenant if {
	not allowed(tool("t1", "sales", "browser_state", {}))
	reason(tool("t1", "sales", "browser_state", {})) == "agent sales is not available to tenant t1"
}

# ---------------------------------------------------------------- tools: arguments

test_python_code_within_limit if allowed(tool("t0", "a", "python_exec", {"code": "print(1)"}))

test_python_code_over_default_limit if {
	code := concat("", [x | some _ in numbers.range(1, 6554); x := "0123456789"])
	not allowed(tool("t0", "a", "python_exec", {"code": code}))
	reason(tool("t0", "a", "python_exec", {"code": code})) == "python_exec code is 65540 bytes; tenant t0 allows at most 65536"
}

test_python_code_counts_utf8_bytes if {
	# 4 characters, 10 bytes: at the limit of t1 (10), one more byte is over it.
	allowed(tool("t1", "research", "python_exec", {"code": "é€€é"}))
	not allowed(tool("t1", "research", "python_exec", {"code": "é€€éa"}))
	contains(reason(tool("t1", "research", "python_exec", {"code": "é€€éa"})), "is 11 bytes")
}

test_python_code_must_be_string if {
	not allowed(tool("t0", "a", "python_exec", {"code": 42}))
	reason(tool("t0", "a", "python_exec", {"code": 42})) == "python_exec needs a code argument (a string)"
	not allowed(tool("t0", "a", "python_exec", {}))
}

test_http_fetch_schemes if {
	allowed(tool("t0", "a", "http_fetch", {"url": "http://x.test/"}))
	allowed(tool("t0", "a", "http_fetch", {"url": "HTTPS://x.test/"}))
	not allowed(tool("t0", "a", "http_fetch", {"url": "file:///etc/passwd"}))
	not allowed(tool("t0", "a", "http_fetch", {"url": "gopher://x.test/"}))
	not allowed(tool("t0", "a", "http_fetch", {"url": "x.test/page"}))
	not allowed(tool("t0", "a", "http_fetch", {"url": "httpx://x.test/"}))
}

test_http_fetch_scheme_reason if {
	reason(tool("t0", "a", "http_fetch", {"url": "file:///etc/passwd"})) == "http_fetch URL file:///etc/passwd is not allowed: use a URL starting with http:// or https://"
}

test_long_url_shortened_in_reason if {
	url := concat("", ["ftp://", concat("", [x | some _ in numbers.range(1, 10); x := "abcdefghij"])])
	r := reason(tool("t0", "a", "http_fetch", {"url": url}))
	contains(r, "ftp://abcdefghijabcdefghijabcdefghijabcd...")
	not contains(r, "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghij")
}

test_tenant_schemes_replace_default if {
	not allowed(tool("t1", "support", "http_fetch", {"url": "http://x.test/"}))
	allowed(tool("t1", "support", "http_fetch", {"url": "https://x.test/"}))
}

test_http_fetch_needs_url if {
	not allowed(tool("t0", "a", "http_fetch", {}))
	reason(tool("t0", "a", "http_fetch", {})) == "http_fetch needs a url argument (a string)"
}

test_browser_navigate_scheme if {
	allowed(tool("t0", "a", "browser_navigate", {"url": "http://127.0.0.1:8000/form"}))
	not allowed(tool("t0", "a", "browser_navigate", {"url": "file:///etc/passwd"}))
	not allowed(tool("t0", "a", "browser_navigate", {"url": "javascript:alert(1)"}))
}

# ---------------------------------------------------------------- network

test_public_allowed if {
	allowed(net("t0", "example.test", "93.184.216.34", "public"))
	reason(net("t0", "example.test", "93.184.216.34", "public")) == "http_fetch to example.test (93.184.216.34) is allowed for tenant t0 (public)"
}

test_public_ipv6_allowed if allowed(net("t0", "v6.test", "2606:2800:220:1:248:1893:25c8:1946", "public"))

test_loopback_denied_by_default if {
	not allowed(net("t0", "localhost", "127.0.0.1", "loopback"))
	not allowed(net("t0", "localhost", "::1", "loopback"))
	reason(net("t0", "localhost", "127.0.0.1", "loopback")) == "http_fetch to localhost (127.0.0.1) is blocked: loopback addresses are not allowed for tenant t0; an operator can allowlist the host or a CIDR in the tenant's network policy"
}

test_private_link_local_and_others_denied_by_default if {
	not allowed(net("t0", "a", "10.0.0.1", "private"))
	not allowed(net("t0", "a", "192.168.1.1", "private"))
	not allowed(net("t0", "a", "172.16.5.4", "private"))
	not allowed(net("t0", "a", "169.254.1.1", "link_local"))
	not allowed(net("t0", "a", "0.0.0.0", "unspecified"))
	not allowed(net("t0", "a", "224.0.0.1", "multicast"))
	not allowed(net("t0", "a", "240.0.0.1", "reserved"))
}

test_metadata_denied_by_default if {
	not allowed(net("t0", "169.254.169.254", "169.254.169.254", "metadata"))
	not allowed(net("t0", "x", "fd00:ec2::254", "metadata"))
	not allowed(net("t0", "metadata.google.internal", "169.254.169.254", "metadata"))
	contains(reason(net("t0", "x", "fd00:ec2::254", "metadata")), "cloud metadata endpoints are not allowed")
}

test_mislabelled_category_uses_the_address if {
	not allowed(net("t0", "sneaky.test", "127.0.0.1", "public"))
	contains(reason(net("t0", "sneaky.test", "127.0.0.1", "public")), "loopback addresses")
	not allowed(net("t0", "sneaky.test", "10.0.0.1", "public"))
	not allowed(net("t0", "sneaky.test", "169.254.169.254", "public"))
	contains(reason(net("t0", "sneaky.test", "169.254.169.254", "public")), "cloud metadata")
	not allowed(net("t0", "metadata.google.internal", "93.184.216.34", "public"))
	not allowed(net("t0", "x", "::ffff:127.0.0.1", "public"))
	not allowed(net("t0", "x", "fe80::1", "public"))
	not allowed(net("t0", "x", "fc00::1", "public"))
}

test_unknown_category_denied if {
	not allowed(net("t0", "x", "93.184.216.34", "galactic"))
	contains(reason(net("t0", "x", "93.184.216.34", "galactic")), "addresses of unknown category")
}

test_cidr_allowlist if {
	allowed(net("t1", "127.0.0.1", "127.0.0.1", "loopback"))
	not allowed(net("t1", "127.0.0.2", "127.0.0.2", "loopback"))
	allowed(net("t1", "db", "10.1.2.3", "private"))
	not allowed(net("t1", "db", "10.2.0.1", "private"))
}

test_host_allowlist if {
	allowed(net("t1", "LOCALHOST", "::1", "loopback"))
	allowed(net("t1", "wiki.corp.test", "192.168.1.1", "private"))
	not allowed(net("t1", "wiki.corp.test.evil", "192.168.1.1", "private"))
}

test_metadata_needs_its_own_entry if {
	# A CIDR or host glob that covers the metadata address is not enough.
	d := decide(net("t0", "169.254.169.254", "169.254.169.254", "metadata")) with data.agentcluster.defaults.network as {"allow_cidrs": ["0.0.0.0/0", "169.254.0.0/16"], "allow_hosts": ["*"]}
	d.allowed == false
	allowed(net("t1", "169.254.169.254", "169.254.169.254", "metadata"))
	not allowed(net("t1", "x", "fd00:ec2::254", "metadata"))
}

test_allow_public_false if {
	not allowed(net("narrow", "example.test", "93.184.216.34", "public"))
	allowed(net("narrow", "docs.test", "10.9.9.9", "private"))
}

test_network_scheme_checked if {
	request := json.patch(net("t1", "x", "93.184.216.34", "public"), [{"op": "replace", "path": "/target/scheme", "value": "ftp"}])
	not allowed(request)
	reason(request) == "network scheme \"ftp\" is not allowed; allowed: https"
}

test_network_target_missing_parts_denied if {
	not allowed({"kind": "network", "tenant": "t0", "agent": "a", "tool": "http_fetch"})
	no_ip := json.remove(net("t0", "x", "93.184.216.34", "public"), ["/target/ip"])
	not allowed(no_ip)
	contains(reason(no_ip), "network target has no ip")
	no_host := json.remove(net("t0", "x", "93.184.216.34", "public"), ["/target/host"])
	not allowed(no_host)
	bad_ip := net("t0", "x", "not-an-ip", "public")
	not allowed(bad_ip)
	reason(bad_ip) == "network target ip \"not-an-ip\" is not an IP address"
	not allowed(net("t0", "x", "fe80::1%eth0", "public"))
}

# ---------------------------------------------------------------- IPv6 forms carrying an IPv4 address

netp(tenant, host, ip, category, port) := json.patch(net(tenant, host, ip, category), [{"op": "replace", "path": "/target/port", "value": port}])

# [address, the category of the IPv4 address it carries]
carried_cases := [
	["::127.0.0.1", "loopback"], # IPv4-compatible ::/96
	["::7f00:1", "loopback"],
	["0:0:0:0:0:0:7f00:1", "loopback"],
	["::0.0.0.1", "loopback"], # that is ::1
	["::2", "unspecified"],
	["::a9fe:a9fe", "metadata"],
	["::e000:1", "multicast"],
	["::c000:201", "reserved"],
	["::ffff:127.0.0.1", "loopback"], # IPv4-mapped
	["::FFFF:7F00:1", "loopback"],
	["0:0:0:0:0:ffff:7f00:1", "loopback"],
	["::ffff:0.0.0.0", "unspecified"],
	["::ffff:a9fe:a9fe", "metadata"],
	["::ffff:0:7f00:1", "loopback"], # IPv4-translated
	["64:ff9b::7f00:1", "loopback"], # NAT64
	["64:ff9b::127.0.0.1", "loopback"],
	["64:ff9b::a00:1", "private"],
	["64:ff9b:1::7f00:1", "loopback"], # NAT64 local use
	["64:ff9b:1:ffff::a9fe:a9fe", "metadata"],
	["2002:7f00:1::", "loopback"], # 6to4
	["2002:a9fe:a9fe::1", "metadata"],
	["2002:c0a8:101:1::1", "private"],
	["2001:0:808:808::80ff:fffe", "loopback"], # Teredo, client 127.0.0.1
	["2001:0:7f00:1::f7f7:f7f7", "loopback"], # Teredo, server 127.0.0.1
	["2001:0:808:808::f5ff:fefe", "private"], # Teredo, client 10.0.1.1
]

test_ipv6_forms_are_judged_by_the_ipv4_address_they_carry if {
	every case in carried_cases {
		d := decide(net("t0", "x.test", case[0], "public"))
		d.allowed == false
		contains(d.reason, concat("", ["is blocked: ", authz._category_text[case[1]]]))
	}
}

test_ipv6_forms_carrying_a_public_ipv4_address_are_public if {
	every ip in ["::ffff:8.8.8.8", "64:ff9b::808:808", "64:ff9b:1::808:808", "2002:808:808::1", "2001:0:808:808::f7f7:f7f7"] {
		reason(net("t0", "x.test", ip, "public")) == concat("", ["http_fetch to x.test (", ip, ") is allowed for tenant t0 (public)"])
	}
}

test_plain_ipv6_is_not_unwrapped if {
	contains(reason(net("t0", "x", "::", "public")), "unspecified addresses")
	contains(reason(net("t0", "x", "::1", "public")), "loopback addresses")
	contains(reason(net("t0", "x", "2001:db8::1", "public")), "reserved addresses")
	contains(reason(net("t0", "x", "5f00::1", "public")), "reserved addresses")
	contains(reason(net("t0", "x", "fec0::1", "public")), "private network addresses")
	contains(reason(net("t0", "x", "FD00:EC2:0::254", "public")), "cloud metadata")
	allowed(net("t0", "x", "2606:4700::1111", "public"))
}

test_ipv4_mapped_addresses_match_ipv4_allowlists if {
	allowed(net("t1", "x", "::ffff:127.0.0.1", "loopback"))
	allowed(net("t1", "x", "::ffff:a9fe:a9fe", "metadata"))

	# Other forms reach the IPv4 host through a translator: an IPv4 CIDR does not open them.
	not allowed(net("t1", "x", "::127.0.0.1", "loopback"))
	not allowed(net("t1", "x", "64:ff9b::7f00:1", "loopback"))
}

# ---------------------------------------------------------------- ports

test_public_addresses_only_on_allowed_ports if {
	allowed(netp("t0", "example.test", "93.184.216.34", "public", 443))
	allowed(netp("t0", "example.test", "93.184.216.34", "public", 80))
	reason(netp("t0", "example.test", "93.184.216.34", "public", 8080)) == "http_fetch to example.test (93.184.216.34) is blocked: port 8080 of public addresses is not allowed for tenant t0 (allowed: 80, 443); an operator can change network.allow_ports or allowlist the host"
	not allowed(netp("t0", "x.test", "2606:4700::1111", "public", 22))
	not allowed(netp("t0", "x.test", "::ffff:8.8.8.8", "public", 6379))
}

test_a_tenant_sets_its_own_ports if {
	allowed(netp("ports", "x.test", "93.184.216.34", "public", 8443))
	not allowed(netp("ports", "x.test", "93.184.216.34", "public", 443))
	contains(reason(netp("ports", "x.test", "93.184.216.34", "public", 443)), "(allowed: 8443)")
}

test_allowlisted_targets_on_any_port if {
	allowed(netp("t1", "127.0.0.1", "127.0.0.1", "loopback", 8265))
	allowed(netp("t1", "wiki.corp.test", "93.184.216.34", "public", 22))
	allowed(netp("t1", "169.254.169.254", "169.254.169.254", "metadata", 8080))
	not allowed(netp("t1", "127.0.0.2", "127.0.0.2", "loopback", 80))
}

test_a_port_denial_is_not_reported_for_other_denials if {
	r := reason(netp("t0", "x", "10.0.0.1", "private", 8080))
	contains(r, "private network addresses are not allowed")
	not contains(r, "port 8080")
	not allowed(netp("narrow", "example.test", "93.184.216.34", "public", 8080))
	contains(reason(netp("narrow", "example.test", "93.184.216.34", "public", 8080)), "public addresses are not allowed")
}

test_network_target_port_must_be_a_port if {
	every port in ["80", 0, 65536, 80.5, -1, null, true] {
		d := decide(netp("t1", "127.0.0.1", "127.0.0.1", "loopback", port))
		d.allowed == false
		contains(d.reason, "network target has no port (an integer from 1 to 65535)")
	}
	no_port := json.remove(net("t0", "x", "93.184.216.34", "public"), ["/target/port"])
	contains(reason(no_port), "has no port")
}

test_malformed_allow_ports_deny if {
	not allowed(netp("badports", "x", "93.184.216.34", "public", 80))
	contains(reason(netp("badports", "x", "93.184.216.34", "public", 80)), "malformed at network.allow_ports")
}

# ---------------------------------------------------------------- API actions

test_tenant_actions_allowed_by_default if {
	every action in ["session.create", "session.read", "session.message", "session.cancel", "session.delete"] {
		allowed(api("t0", action, null, false))
	}
	reason(api("t0", "session.read", null, false)) == "action session.read is allowed for tenant t0"
}

test_keys_manage_needs_admin if {
	not allowed(api("t0", "keys.manage", null, false))
	reason(api("t0", "keys.manage", null, false)) == "keys.manage needs an admin key (tenant t0)"
	not allowed(object.remove(api("t0", "keys.manage", null, false), ["admin"]))
	not allowed(api("t0", "keys.manage", null, "true"))
	allowed(api("t0", "keys.manage", null, true))
}

test_unknown_action_denied if {
	not allowed(api("t0", "session.explode", null, true))
	startswith(reason(api("t0", "session.explode", null, true)), "unknown API action \"session.explode\"; expected one of keys.manage, session.approve, session.cancel")
}

test_tenant_denied_action if {
	not allowed(api("t1", "session.delete", null, false))
	reason(api("t1", "session.delete", null, false)) == "action session.delete is disabled for tenant t1"
	allowed(api("t1", "session.create", "support", false))
}

test_tenant_agent_allowlist_for_actions if {
	not allowed(api("t1", "session.create", "sales", false))
	reason(api("t1", "session.create", "sales", false)) == "agent sales is not available to tenant t1"
	allowed(api("t1", "session.create", "research-eu", false))
	allowed(api("t0", "session.create", "sales", false))
}

test_api_agent_must_be_string_or_null if not allowed(api("t0", "session.create", 7, false))

# ---------------------------------------------------------------- committed data files

test_example_tenant_file_is_loaded if {
	d := authz.decision with input as tool("example", "support", "python_exec", {"code": "1"})
	d.reason == "tool python_exec is not allowed for agent support in tenant example"
}

test_committed_defaults_allow_public_fetch if {
	d := authz.decision with input as net("someone", "example.test", "93.184.216.34", "public")
	d.allowed == true
}

# ---------------------------------------------------------------- approvals ("ask")

test_a_tool_rule_asks_with_its_reason if {
	d := decide(tool("careful", "a", "python_exec", {"code": "1"}))
	d == {"allowed": true, "ask": true, "reason": "code runs on our machines"}
}

test_an_argument_rule_asks_only_for_matching_values if {
	d := decide(tool("careful", "a", "http_fetch", {"url": "https://pay.test/charge"}))
	d.ask == true
	d.reason == "tool http_fetch needs a person's approval"
	other := decide(tool("careful", "a", "http_fetch", {"url": "https://docs.test/"}))
	object.keys(other) == {"allowed", "reason"}
	other.allowed == true
}

test_a_denied_call_is_denied_not_asked if {
	d := decide(tool("careful", "a", "http_fetch", {"url": "ftp://pay.test/x"}))
	d.allowed == false
	not d.ask
}

test_no_rules_never_ask if {
	d := decide(tool("t0", "a", "python_exec", {"code": "1"}))
	object.keys(d) == {"allowed", "reason"}
}

test_a_malformed_rule_denies_naming_it if {
	d := decide(tool("badrules", "a", "x", {}))
	d.allowed == false
	contains(d.reason, "malformed at approvals[0]")
}

test_approvals_not_a_list_denies if {
	d := authz.decision with input as tool("odd", "a", "x", {}) with data.agentcluster.tenants as {"odd": {"approvals": {"tools": ["x"]}}}
	d.allowed == false
	contains(d.reason, "malformed at approvals")
}

test_session_approve_is_an_api_action if allowed(api("t0", "session.approve", null, false))

# ---------------------------------------------------------------- roles the tenant requires

api_with_roles(tenant, action, roles) := object.union(api(tenant, action, null, false), {"roles": roles})

test_an_action_with_required_roles_needs_one_of_them if {
	allowed(api_with_roles("roles", "session.approve", ["approver"]))
	allowed(api_with_roles("roles", "session.approve", ["reader", "admin"]))
	not allowed(api_with_roles("roles", "session.approve", ["reader"]))
	not allowed(api("roles", "session.approve", null, false))
	reason(api_with_roles("roles", "session.approve", [])) == "action session.approve needs a key with the role admin or approver in tenant roles"
}

test_other_actions_need_no_role if allowed(api_with_roles("roles", "session.read", []))

test_malformed_action_roles_deny_naming_them if {
	not allowed(api_with_roles("badroles", "session.read", ["approver"]))
	contains(reason(api_with_roles("badroles", "session.read", [])), "malformed at action_roles.session.approve")
}

test_roles_must_be_strings if {
	not allowed(api_with_roles("t0", "session.read", [1]))
}

test_data_without_approvals_or_action_roles_still_decides if {
	d := authz.decision with input as tool("t0", "a", "calculator", {}) with data.agentcluster.defaults as {"agents": ["*"], "tools": {"allow": ["*"], "deny": []}, "deny_actions": [], "network": {}, "limits": {"python_exec_max_code_bytes": 10, "url_schemes": ["https"]}}
	d == {"allowed": true, "reason": "tool calculator is allowed for agent a in tenant t0"}
	a := authz.decision with input as api("t0", "session.approve", null, false) with data.agentcluster.defaults as {"agents": ["*"], "tools": {"allow": ["*"], "deny": []}, "deny_actions": [], "network": {}, "limits": {}}
	a.allowed == true
}

# ---------------------------------------------------------------- batch (one LLM step's tool calls)

test_batch_answers_each_request_as_alone_in_order if {
	batch := [
		tool("t1", "support", "http_fetch", {"url": "https://x.test/"}),
		tool("t1", "support", "python_exec", {"code": "1"}),
		tool("careful", "a", "python_exec", {"code": "1"}),
		{"tool": "no kind"},
	]
	ds := authz.decisions with input as {"batch": batch} with data.agentcluster.tenants as tenants
	count(ds) == 4
	every i, request in batch {
		ds[i] == decide(request)
	}
	ds[0].allowed == true
	ds[1].allowed == false
	ds[2].ask == true
	ds[3].allowed == false
}

# No list, no decisions: the engine denies every call whose decision is missing.
test_batch_without_a_list_has_no_decisions if {
	ds := authz.decisions with input as {"batch": "x"} with data.agentcluster.tenants as tenants
	ds == []
	one := authz.decisions with input as tool("t1", "support", "http_fetch", {})
	one == []
}
