# Authorization for agentcluster: tool calls, network targets of http_fetch and API actions.
#
# Entry point: data.agentcluster.authz.decision -> {"allowed": bool, "reason": string}, plus
# "ask": true on an allowed tool call that a rule of the tenant's `approvals` data sends to a person
# first (the turn pauses until someone approves, edits or rejects it).
# The same module runs in the OPA server and, compiled to Wasm, in-process
# (agentcluster/policy/authz.wasm; rebuild with `make policy-wasm`). Only builtins that OPA's Wasm
# target implements natively are used (no sprintf, regex or strings.* here): check the
# `builtins` export of a new build before reaching for another one.
#
# Denials are collected as messages; a request is allowed only when it is well formed, of a known
# kind and collects no denial. Permissions are checked as `not <permitted>`, so a missing or
# malformed piece of data denies instead of allowing.
package agentcluster.authz

import rego.v1

# ---------------------------------------------------------------- decision

default decision := {"allowed": false, "reason": "no policy rule matched the request"}

decision := {"allowed": true, "reason": allow_reason} if {
	count(denials) == 0
	allow_reason
	count(_approval_reasons) == 0
}

decision := {"allowed": true, "ask": true, "reason": concat("; ", sort(_approval_reasons))} if {
	count(denials) == 0
	allow_reason
	count(_approval_reasons) > 0
}

decision := {"allowed": false, "reason": concat("; ", sort(denials))} if count(denials) > 0

# Batch entry point: data.agentcluster.authz.decisions -> one decision per request of
# input.batch, in its order (the tool calls of one LLM step, decided in one round trip to the OPA
# server). Each is exactly what `decision` answers for that request alone.
decisions := [d | some request in input.batch; d := decision with input as request]

known_kinds := {"tool", "network", "api"}

denials contains "policy input has no kind; expected one of api, network, tool" if {
	not input.kind
}

denials contains msg if {
	not object.get(input, "kind", null) in known_kinds
	msg := concat("", ["unknown policy input kind ", _show(input.kind), "; expected one of api, network, tool"])
}

# ---------------------------------------------------------------- effective settings
# A tenant's entry overrides the defaults key by key: a key the tenant sets replaces the default
# value for that key entirely (lists are not merged).

default _defaults := {}

_defaults := data.agentcluster.defaults

default _tenants := {}

_tenants := data.agentcluster.tenants

_tenant := _tenants[input.tenant]

default _tenant_settings := {}

_tenant_settings := _tenant if is_object(_tenant)

setting(key) := _tenant_settings[key]

setting(key) := _defaults[key] if not _has_key(_tenant_settings, key)

_has_key(obj, key) if _ = obj[key]

_tenant_name := input.tenant if _nonempty_string(input.tenant)

_tenant_name := "(none)" if not _nonempty_string(object.get(input, "tenant", null))

# ---- data checks: malformed settings deny every request of the tenant, naming what to fix,
# instead of silently dropping a deny list that is not a list.

denials contains msg if {
	input.kind in known_kinds
	count(_malformed) > 0
	msg := concat("", [
		"policy data for tenant ", _tenant_name, " is malformed at ", concat(", ", sort(_malformed)),
		"; an operator must fix it",
	])
}

_malformed contains key if {
	some key in ["agents", "deny_actions"]
	not _string_list(setting(key))
}

_malformed contains key if {
	some key in ["tools", "network", "limits"]
	value := setting(key)
	not is_object(value)
}

_malformed contains concat(".", ["tools", field]) if {
	some field in ["allow", "deny"]
	value := setting("tools")[field]
	not _string_list(value)
}

_malformed contains concat(".", ["agent_tools", input.agent]) if {
	_nonempty_string(input.agent)
	not is_object(_agent_tool_entry)
}

_malformed contains concat(".", ["agent_tools", input.agent, field]) if {
	some field in ["allow", "deny"]
	value := _agent_tool_entry[field]
	not _string_list(value)
}

_malformed contains concat(".", ["network", field]) if {
	some field in ["allow_hosts", "allow_cidrs", "allow_metadata"]
	value := setting("network")[field]
	not _string_list(value)
}

_malformed contains "network.allow_public" if {
	value := setting("network").allow_public
	not is_boolean(value)
}

_malformed contains "network.allow_ports" if {
	value := setting("network").allow_ports
	not _port_list(value)
}

_port_list(value) if {
	is_array(value)
	every item in value {
		_is_port(item)
	}
}

# Missing keys (data from before they existed) mean none: only a present, malformed one denies.
_malformed contains "approvals" if {
	value := setting("approvals")
	not is_array(value)
}

_malformed contains "action_roles" if {
	value := setting("action_roles")
	not is_object(value)
}

_malformed contains concat(".", ["action_roles", action]) if {
	some action, roles in setting("action_roles")
	not _string_list(roles)
}

_malformed contains concat("", ["approvals[", format_int(index, 10), "]"]) if {
	some index, rule in setting("approvals")
	not _approval_rule(rule)
}

_approval_rule(rule) if {
	is_object(rule)
	_string_list(rule.tools)
	every key, _ in rule {
		key in {"tools", "argument", "match", "reason"}
	}
	_optional_string(rule, "argument")
	_optional_string(rule, "reason")
	_approval_match_list(rule)
}

_optional_string(obj, key) if not _has_key(obj, key)

_optional_string(obj, key) if is_string(obj[key])

# `match` goes with `argument`: both or neither.
_approval_match_list(rule) if {
	not _has_key(rule, "argument")
	not _has_key(rule, "match")
}

_approval_match_list(rule) if {
	_has_key(rule, "argument")
	_string_list(rule.match)
}

_malformed contains "limits.url_schemes" if {
	value := setting("limits").url_schemes
	not _string_list(value)
}

_malformed contains "limits.python_exec_max_code_bytes" if {
	value := setting("limits").python_exec_max_code_bytes
	not is_number(value)
}

_string_list(value) if {
	is_array(value)
	every item in value {
		is_string(item)
	}
}

# ---------------------------------------------------------------- common input checks

denials contains "policy input has no tenant (a non-empty string)" if {
	input.kind in known_kinds
	not _nonempty_string(object.get(input, "tenant", null))
}

denials contains msg if {
	input.kind in {"tool", "network"}
	not _nonempty_string(object.get(input, "agent", null))
	msg := concat("", [input.kind, " request has no agent (a non-empty string)"])
}

# The tenant's agent allowlist applies to tool calls, network targets and API actions that name an
# agent.
denials contains msg if {
	input.kind in known_kinds
	_nonempty_string(input.agent)
	not _agent_available
	msg := concat("", ["agent ", input.agent, " is not available to tenant ", _tenant_name])
}

_agent_available if {
	some pattern in setting("agents")
	glob.match(pattern, null, input.agent)
}

# ---------------------------------------------------------------- tool calls

denials contains "tool request has no tool (a non-empty string)" if {
	input.kind == "tool"
	not _nonempty_string(object.get(input, "tool", null))
}

denials contains "tool request arguments must be an object" if {
	input.kind == "tool"
	input.arguments
	not is_object(input.arguments)
}

denials contains msg if {
	input.kind == "tool"
	_nonempty_string(input.tool)
	not _tool_allowed_for_tenant
	msg := concat("", ["tool ", input.tool, " is not allowed in tenant ", _tenant_name])
}

denials contains msg if {
	input.kind == "tool"
	some pattern in _tenant_tool_rules.deny
	glob.match(pattern, null, input.tool)
	msg := concat("", ["tool ", input.tool, " is denied in tenant ", _tenant_name, " (rule ", pattern, ")"])
}

denials contains msg if {
	input.kind == "tool"
	_nonempty_string(input.tool)
	_nonempty_string(input.agent)
	not _tool_allowed_for_agent
	msg := concat("", ["tool ", input.tool, " is not allowed for agent ", input.agent, " in tenant ", _tenant_name])
}

denials contains msg if {
	input.kind == "tool"
	_nonempty_string(input.agent)
	some pattern in _agent_tool_rules.deny
	glob.match(pattern, null, input.tool)
	msg := concat("", [
		"tool ", input.tool, " is denied for agent ", input.agent, " in tenant ", _tenant_name,
		" (rule ", pattern, ")",
	])
}

default _tenant_tool_rules := {"allow": [], "deny": []}

_tenant_tool_rules := _tool_rules(setting("tools"))

# Per-agent rules: the tenant's entry for the agent if it has one, else the defaults' entry, else
# no restriction. Malformed entries allow nothing.
default _agent_tool_rules := {"allow": [], "deny": []}

_agent_tool_rules := _tool_rules(_agent_tool_entry)

_agent_tool_entry := _tenant_settings.agent_tools[input.agent]

_agent_tool_entry := _defaults.agent_tools[input.agent] if {
	not _has_key(object.get(_tenant_settings, "agent_tools", {}), input.agent)
}

_agent_tool_entry := {} if {
	not _has_key(object.get(_tenant_settings, "agent_tools", {}), input.agent)
	not _has_key(object.get(_defaults, "agent_tools", {}), input.agent)
}

_tool_rules(rules) := {
	"allow": object.get(rules, "allow", ["*"]),
	"deny": object.get(rules, "deny", []),
}

_tool_allowed_for_tenant if {
	some pattern in _tenant_tool_rules.allow
	glob.match(pattern, null, input.tool)
}

_tool_allowed_for_agent if {
	some pattern in _agent_tool_rules.allow
	glob.match(pattern, null, input.tool)
}

# ---- approvals: allowed calls a person decides first ("ask")
# Each rule of the tenant's `approvals` list names tool globs and, optionally, one argument whose
# string value is matched against globs (a target URL, a path). Any matching rule asks; its
# `reason` (or a default naming the tool) tells the person why.

_approval_reasons contains reason if {
	input.kind == "tool"
	some rule in setting("approvals")
	some pattern in rule.tools
	glob.match(pattern, null, input.tool)
	_approval_arguments_match(rule)
	reason := object.get(rule, "reason", concat("", ["tool ", input.tool, " needs a person's approval"]))
}

_approval_arguments_match(rule) if not _has_key(rule, "argument")

_approval_arguments_match(rule) if {
	value := object.get(input, ["arguments", rule.argument], null)
	is_string(value)
	some pattern in rule.match
	glob.match(pattern, null, value)
}

# ---- argument checks

default _limits := {}

_limits := setting("limits")

denials contains msg if {
	input.kind == "tool"
	input.tool == "python_exec"
	not is_string(object.get(input, ["arguments", "code"], null))
	msg := "python_exec needs a code argument (a string)"
}

denials contains msg if {
	input.kind == "tool"
	input.tool == "python_exec"
	size := _utf8_bytes(input.arguments.code)
	size > _limits.python_exec_max_code_bytes
	msg := concat("", [
		"python_exec code is ", format_int(size, 10), " bytes; tenant ", _tenant_name,
		" allows at most ", format_int(_limits.python_exec_max_code_bytes, 10),
	])
}

# Tools whose argument is a URL, and the name of that argument.
url_arguments := {"http_fetch": "url", "browser_navigate": "url"}

denials contains msg if {
	input.kind == "tool"
	some tool, arg in url_arguments
	input.tool == tool
	not is_string(object.get(input, ["arguments", arg], null))
	msg := concat("", [tool, " needs a ", arg, " argument (a string)"])
}

denials contains msg if {
	input.kind == "tool"
	some tool, arg in url_arguments
	input.tool == tool
	url := input.arguments[arg]
	is_string(url)
	not _url_scheme_allowed(url)
	msg := concat("", [
		tool, " URL ", _url_head(url), " is not allowed: use a URL starting with ",
		concat(" or ", [concat("", [s, "://"]) | some s in _url_schemes]),
	])
}

default _url_schemes := []

_url_schemes := _limits.url_schemes

_url_scheme_allowed(url) if {
	some scheme in _url_schemes
	startswith(lower(url), concat("", [scheme, "://"]))
}

# The start of a URL for messages, so a huge or secret-bearing URL is not echoed whole.
_url_head(url) := url if count(url) <= 40

_url_head(url) := concat("", [substring(url, 0, 40), "..."]) if count(url) > 40

# ---------------------------------------------------------------- network targets

denials contains "network request has no target (an object)" if {
	input.kind == "network"
	not is_object(object.get(input, "target", null))
}

denials contains "network target has no ip (an address string)" if {
	input.kind == "network"
	is_object(input.target)
	not is_string(object.get(input, ["target", "ip"], null))
}

denials contains msg if {
	input.kind == "network"
	is_string(input.target.ip)
	not _valid_ip
	msg := concat("", ["network target ip ", _show(input.target.ip), " is not an IP address"])
}

_valid_ip if net.cidr_contains("0.0.0.0/0", input.target.ip)

_valid_ip if net.cidr_contains("::/0", input.target.ip)

denials contains "network target has no host (the name as written, a string)" if {
	input.kind == "network"
	is_object(input.target)
	not is_string(object.get(input, ["target", "host"], null))
}

denials contains msg if {
	input.kind == "network"
	not object.get(input, ["target", "scheme"], null) in {s | some s in _url_schemes}
	msg := concat("", [
		"network scheme ", _show(object.get(input, ["target", "scheme"], null)), " is not allowed; allowed: ",
		concat(", ", _url_schemes),
	])
}

denials contains "network target has no port (an integer from 1 to 65535)" if {
	input.kind == "network"
	is_object(input.target)
	not _is_port(object.get(input, ["target", "port"], null))
}

denials contains msg if {
	input.kind == "network"
	is_string(input.target.ip)
	not _target_allowed
	not _port_refused
	msg := concat("", [
		_target_label, " is blocked: ", _category_text[_category], " are not allowed for tenant ",
		_tenant_name, "; ", _category_hint[_category],
	])
}

denials contains msg if {
	input.kind == "network"
	is_string(input.target.ip)
	not _target_allowed
	_port_refused
	msg := concat("", [
		_target_label, " is blocked: port ", format_int(input.target.port, 10),
		" of public addresses is not allowed for tenant ", _tenant_name, " (allowed: ",
		concat(", ", [format_int(port, 10) | some port in _allow_ports]),
		"); an operator can change network.allow_ports or allowlist the host",
	])
}

_target_label := concat("", [
	object.get(input, "tool", "network access"), " to ", object.get(input.target, "host", "?"),
	" (", input.target.ip, ")",
])

_category_text := {
	"public": "public addresses",
	"loopback": "loopback addresses",
	"private": "private network addresses",
	"link_local": "link-local addresses",
	"metadata": "cloud metadata endpoints",
	"reserved": "reserved addresses",
	"multicast": "multicast addresses",
	"unspecified": "unspecified addresses",
	"unknown": "addresses of unknown category",
}

_category_hint[c] := "an operator can allowlist the host or a CIDR in the tenant's network policy" if {
	some c, _ in _category_text
	c != "metadata"
}

_category_hint["metadata"] := "an operator must list this exact address or host in the tenant's network.allow_metadata"

default _network := {}

_network := setting("network")

# Ports of public addresses; allowlisted targets (host, CIDR, metadata entry) are reachable on any
# port: the operator named that destination.
default _allow_ports := [80, 443]

_allow_ports := _network.allow_ports

_port_refused if {
	_category == "public"
	object.get(_network, "allow_public", true) == true
	_is_port(input.target.port)
	not input.target.port in _allow_ports
}

_target_allowed if {
	_category == "public"
	object.get(_network, "allow_public", true) == true
	input.target.port in _allow_ports
}

_target_allowed if {
	_category != "metadata"
	_allowlisted
}

_target_allowed if {
	_category == "metadata"
	some entry in object.get(_network, "allow_metadata", [])
	entry in {input.target.ip, _cidr_ip, lower(input.target.host)}
}

_allowlisted if {
	some pattern in object.get(_network, "allow_hosts", [])
	glob.match(lower(pattern), null, lower(input.target.host))
}

_allowlisted if {
	some cidr in object.get(_network, "allow_cidrs", [])
	net.cidr_contains(cidr, _cidr_ip)
}

# The address matched against allowlisted CIDRs: an IPv4-mapped address is its IPv4 address (the
# same host; Go's CIDR matching sees it so, the Wasm builtin does not, so both get the IPv4 text).
# Other IPv6 forms that carry an IPv4 address need an IPv6 CIDR or a host entry of their own.
_cidr_ip := v4 if {
	array.slice(_groups, 0, 6) == [0, 0, 0, 0, 0, 65535]
	some v4 in _carried_ipv4s
} else := input.target.ip

# The category is the stricter of what the caller says and what the address is: a caller that
# labels 127.0.0.1 "public" is still asking for loopback.
default _category := "unknown"

_category := "metadata" if {
	_is_metadata
} else := input.target.category if {
	input.target.category != "public"
	input.target.category in object.keys(_category_text)
} else := _ip_category if {
	_ip_category
} else := "public" if {
	input.target.category == "public"
}

_is_metadata if lower(input.target.host) in metadata_hosts

_is_metadata if input.target.ip in metadata_ips

_is_metadata if {
	some ip in metadata_ips
	_ipv6_groups(ip) == _groups
}

_is_metadata if {
	some ip in _carried_ipv4s
	ip in metadata_ips
}

metadata_hosts := {"metadata.google.internal", "metadata.goog", "metadata"}

metadata_ips := {"169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200"}

# First matching category wins; metadata is checked before these. Addresses that carry an IPv4
# address are classified by it (below), before these ranges.
ip_ranges := [
	["loopback", ["127.0.0.0/8", "::1/128"]],
	["unspecified", ["0.0.0.0/8", "::/128"]],
	["link_local", ["169.254.0.0/16", "fe80::/10"]],
	[
		"private",
		["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fec0::/10"],
	],
	["multicast", ["224.0.0.0/4", "ff00::/8"]],
	[
		"reserved",
		[
			"240.0.0.0/4", "192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15", "198.51.100.0/24",
			"203.0.113.0/24", "2001::/23", "2001:db8::/32", "3fff::/20",
			# IPv6 outside 2000::/3 (global unicast) and the ranges above.
			"::/3", "4000::/2", "8000::/2", "c000::/3", "e000::/4", "f000::/5", "f800::/6", "fe00::/9",
		],
	],
]

_category_order := ["loopback", "unspecified", "link_local", "private", "multicast", "reserved"]

_ip_category := _carried_category if {
	count(_carried_ipv4s) > 0
} else := _plain_category(input.target.ip)

_plain_category(ip) := [c | some c in _category_order; _in_category(c, ip)][0]

_in_category(category, ip) if {
	some entry in ip_ranges
	entry[0] == category
	some cidr in entry[1]
	net.cidr_contains(cidr, ip)
}

# ---- IPv6 addresses that carry an IPv4 address are judged by the IPv4 address they carry
# (as agentcluster.tools._ssrf.embedded_ipv4): IPv4-compatible ::/96 (not :: and ::1),
# IPv4-mapped ::ffff:0:0/96, IPv4-translated ::ffff:0:0:0/96, NAT64 64:ff9b::/96 and the
# local-use 64:ff9b:1::/48 (the IPv4 address in the last 32 bits), 6to4 2002::/16 (bits 16-47),
# Teredo 2001::/32 (server in bits 32-63, client inverted in the last 32 bits; the stricter
# wins). The text is parsed here into eight 16-bit groups: the Wasm target has no IP builtins.

_strictest_first := ["metadata", "loopback", "unspecified", "link_local", "private", "multicast", "reserved", "public"]

_carried_category := [c | some c in _strictest_first; c in _carried_categories][0]

_carried_categories contains _v4_category(ip) if some ip in _carried_ipv4s

_v4_category(ip) := "metadata" if {
	ip in metadata_ips
} else := _plain_category(ip) if {
	_plain_category(ip)
} else := "public"

_carried_ipv4s contains _v4_text(pair[0], pair[1]) if some pair in _carried_pairs

default _groups := []

_groups := _ipv6_groups(input.target.ip)

_carried_pairs contains [_groups[6], _groups[7]] if _last_32_bits

_carried_pairs contains [_groups[1], _groups[2]] if _groups[0] == 8194 # 0x2002

_carried_pairs contains [_groups[2], _groups[3]] if _teredo

_carried_pairs contains [65535 - _groups[6], 65535 - _groups[7]] if _teredo

_teredo if array.slice(_groups, 0, 2) == [8193, 0] # 2001:0::/32

# ::ffff:0:0/96, ::ffff:0:0:0/96, 64:ff9b::/96, 64:ff9b:1::/48, ::/96 but :: and ::1
_last_32_bits if array.slice(_groups, 0, 6) == [0, 0, 0, 0, 0, 65535]

_last_32_bits if array.slice(_groups, 0, 6) == [0, 0, 0, 0, 65535, 0]

_last_32_bits if array.slice(_groups, 0, 6) == [100, 65435, 0, 0, 0, 0]

_last_32_bits if array.slice(_groups, 0, 3) == [100, 65435, 1]

_last_32_bits if {
	array.slice(_groups, 0, 6) == [0, 0, 0, 0, 0, 0]
	not array.slice(_groups, 6, 8) in {[0, 0], [0, 1]}
}

_v4_text(high, low) := concat(".", [
	format_int(bits.rsh(high, 8), 10), format_int(bits.and(high, 255), 10),
	format_int(bits.rsh(low, 8), 10), format_int(bits.and(low, 255), 10),
])

# The eight 16-bit groups of an IPv6 address written as text (undefined for anything else).
_ipv6_groups(ip) := groups if {
	is_string(ip)
	contains(ip, ":")
	not contains(ip, "::")
	groups := _group_list(lower(ip))
	count(groups) == 8
}

_ipv6_groups(ip) := groups if {
	is_string(ip)
	halves := split(lower(ip), "::")
	count(halves) == 2
	left := _group_list(halves[0])
	right := _group_list(halves[1])
	fill := (8 - count(left)) - count(right)
	fill >= 1
	groups := array.concat(array.concat(left, [0 | some _ in numbers.range(1, fill)]), right)
}

_group_list(text) := [] if text == ""

_group_list(text) := groups if {
	text != ""
	parts := split(text, ":")
	last := count(parts) - 1
	head := [_hex16(part) | some part in array.slice(parts, 0, last)]
	count(head) == last
	groups := array.concat(head, _last_groups(parts[last]))
}

_last_groups(part) := [_hex16(part)] if not contains(part, ".")

_last_groups(part) := [(octets[0] * 256) + octets[1], (octets[2] * 256) + octets[3]] if {
	parts := split(part, ".")
	count(parts) == 4
	octets := [_dec8(p) | some p in parts]
	count(octets) == 4
}

_hex16(text) := _digits_value(text, 16) if {
	count(text) >= 1
	count(text) <= 4
}

_dec8(text) := value if {
	count(text) >= 1
	count(text) <= 3
	value := _digits_value(text, 10)
	value <= 255
}

_digits_value(text, base) := sum(values) if {
	indexes := numbers.range(0, count(text) - 1)
	values := [(_digit_values[substring(text, i, 1)] * _powers[base][(count(text) - 1) - i]) | some i in indexes]
	every i in indexes {
		_digit_values[substring(text, i, 1)] < base
	}
}

_digit_values := {
	"0": 0, "1": 1, "2": 2, "3": 3, "4": 4, "5": 5, "6": 6, "7": 7, "8": 8, "9": 9,
	"a": 10, "b": 11, "c": 12, "d": 13, "e": 14, "f": 15,
}

_powers := {10: [1, 10, 100], 16: [1, 16, 256, 4096]}

_is_port(value) if {
	is_number(value)
	value == floor(value)
	value >= 1
	value <= 65535
}

# ---------------------------------------------------------------- API actions

api_actions := {
	"session.create", "session.read", "session.message", "session.cancel", "session.delete", "session.approve",
	"keys.manage",
}

denials contains msg if {
	input.kind == "api"
	not object.get(input, "action", null) in api_actions
	msg := concat("", [
		"unknown API action ", _show(object.get(input, "action", null)), "; expected one of ",
		concat(", ", sort(api_actions)),
	])
}

denials contains msg if {
	input.kind == "api"
	input.action == "keys.manage"
	not input.admin == true
	msg := concat("", ["keys.manage needs an admin key (tenant ", _tenant_name, ")"])
}

denials contains msg if {
	input.kind == "api"
	input.action in setting("deny_actions")
	msg := concat("", ["action ", input.action, " is disabled for tenant ", _tenant_name])
}

# A tenant may require a role of the calling key for an action (`action_roles`: action -> roles,
# any one of which will do), e.g. only approvers decide approvals.
denials contains msg if {
	input.kind == "api"
	required := object.get(setting("action_roles"), input.action, null)
	_string_list(required)
	not _has_role_in(required)
	msg := concat("", [
		"action ", input.action, " needs a key with the role ", concat(" or ", sort(required)),
		" in tenant ", _tenant_name,
	])
}

_has_role_in(required) if {
	some role in object.get(input, "roles", [])
	role in required
}

denials contains "api request roles must be a list of strings" if {
	input.kind == "api"
	_has_key(input, "roles")
	not _string_list(input.roles)
}

denials contains "api request agent must be a string or null" if {
	input.kind == "api"
	_has_key(input, "agent")
	input.agent != null
	not is_string(input.agent)
}

# ---------------------------------------------------------------- allow reasons

# Each also restates its kind's main permission, so a denial whose message failed to build can never
# turn into an allow.
allow_reason := concat("", [
	"tool ", input.tool, " is allowed for agent ", input.agent, " in tenant ", input.tenant,
]) if {
	input.kind == "tool"
	_tool_allowed_for_tenant
	_tool_allowed_for_agent
}

allow_reason := concat("", [
	_target_label, " is allowed for tenant ", input.tenant, " (", _category, ")",
]) if {
	input.kind == "network"
	_valid_ip
	_target_allowed
}

allow_reason := concat("", ["action ", input.action, " is allowed for tenant ", input.tenant]) if {
	input.kind == "api"
	input.action in api_actions
}

# ---------------------------------------------------------------- helpers

_nonempty_string(value) if {
	is_string(value)
	value != ""
}

# Bytes of the UTF-8 encoding (count() on a string counts characters). Base64 is exact once the
# padding is taken off, and unlike hex.encode it is native in OPA's Wasm target.
_utf8_bytes(text) := ((count(encoded) / 4) * 3) - _base64_padding(encoded) if {
	is_string(text)
	encoded := base64.encode(text)
}

_base64_padding(encoded) := 2 if endswith(encoded, "==")

_base64_padding(encoded) := 1 if {
	endswith(encoded, "=")
	not endswith(encoded, "==")
}

_base64_padding(encoded) := 0 if not endswith(encoded, "=")

_show(value) := concat("", ["\"", value, "\""]) if is_string(value)

_show(value) := json.marshal(value) if not is_string(value)
