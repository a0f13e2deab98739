package agentcluster.authz_test

import data.agentcluster.authz

test_health_allowed if authz.allow with input as {"action": "health"}

test_other_actions_denied if not authz.allow with input as {"action": "tool.call"}
