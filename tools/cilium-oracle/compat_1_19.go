//go:build cilium_1_19

// Cilium 1.19: the FQDN regex LRU is resized, not created; selectors match through
// policy/types.LabelSelector; --policy-default-local-cluster defaults to on.
package main

import (
	"flag"
	"io"
	"log/slog"

	cmtypes "github.com/cilium/cilium/pkg/clustermesh/types"
	"github.com/cilium/cilium/pkg/defaults"
	"github.com/cilium/cilium/pkg/fqdn/re"
	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"github.com/cilium/cilium/pkg/labels"
	"github.com/cilium/cilium/pkg/option"
	policyapi "github.com/cilium/cilium/pkg/policy/api"
	policytypes "github.com/cilium/cilium/pkg/policy/types"
)

var (
	logger      = slog.New(slog.NewTextHandler(io.Discard, nil))
	l7Proxy     *bool
	icmpRules   *bool
	nodeSelLbls *bool
	nonDefDeny  *bool
	defLocal    *bool
	lruSize     *uint
)

func registerFlags() {
	l7Proxy = flag.Bool("l7-proxy", option.Config.EnableL7Proxy, "agent option enable-l7-proxy")
	icmpRules = flag.Bool("icmp-rules", option.Config.EnableICMPRules, "agent option enable-icmp-rules")
	nodeSelLbls = flag.Bool("node-selector-labels", option.Config.EnableNodeSelectorLabels, "agent option enable-node-selector-labels")
	nonDefDeny = flag.Bool("non-default-deny", option.Config.EnableNonDefaultDenyPolicies, "agent option enable-non-default-deny-policies")
	defLocal = flag.Bool("default-local-cluster", cmtypes.DefaultPolicyConfig.PolicyDefaultLocalCluster, "agent option policy-default-local-cluster")
	lruSize = flag.Uint("fqdn-regex-compile-lru-size", defaults.FQDNRegexCompileLRUSize, "agent option fqdn-regex-compile-lru-size")
}

func applyFlags() error {
	option.Config.EnableL7Proxy = *l7Proxy
	option.Config.EnableICMPRules = *icmpRules
	option.Config.EnableNodeSelectorLabels = *nodeSelLbls
	option.Config.EnableNonDefaultDenyPolicies = *nonDefDeny
	option.Config.FQDNRegexCompileLRUSize = *lruSize
	re.Resize(logger, option.Config.FQDNRegexCompileLRUSize)
	return nil
}

func policyCluster() string {
	return cmtypes.LocalClusterNameForPolicies(cmtypes.PolicyConfig{PolicyDefaultLocalCluster: *defLocal}, *clusterName)
}

func parseCNP(cnp *ciliumv2.CiliumNetworkPolicy) (policyapi.Rules, error) {
	return cnp.Parse(logger, policyCluster())
}

func parseCCNP(ccnp *ciliumv2.CiliumClusterwideNetworkPolicy) (policyapi.Rules, error) {
	return ccnp.Parse(logger, policyCluster())
}

func matches(es policyapi.EndpointSelector, lbls labels.LabelArray) bool {
	return policytypes.NewLabelSelector(es).Matches(lbls)
}
