use proptest::prelude::*;
use serde_json::json;

use super::*;

const HOUR: i64 = 3_600_000;
/// An hour-aligned base time, far from any calendar edge the fixed periods could meet.
const BASE: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z

fn at(iso: &str) -> i64 {
    raftlord_time::interval::parse_instant(iso).unwrap()
}

#[test]
fn periods_are_taken_off_by_the_calendar_as_joda_does() {
    let p = |s: &str| Period::parse(s).unwrap();
    // A month off the 31st of March is the last day of February.
    assert_eq!(
        p("P1M").before(at("2024-03-31T12:00:00Z")),
        Some(at("2024-02-29T12:00:00Z"))
    );
    assert_eq!(
        p("P1Y").before(at("2024-02-29T00:00:00Z")),
        Some(at("2023-02-28T00:00:00Z"))
    );
    assert_eq!(
        p("P2W").before(at("2024-01-15T00:00:00Z")),
        Some(at("2024-01-01T00:00:00Z"))
    );
    assert_eq!(
        p("P1Y2M10DT2H30M").before(at("2024-05-11T02:30:00Z")),
        Some(at("2023-03-01T00:00:00Z"))
    );
    assert_eq!(p("PT0.5S").before(1000), Some(500));
    for bad in [
        "1M", "P", "PT", "P0D", "P1X", "", "P-1D", "P1D/P2D", "P1DT", "P1D ", "PT1H2D", "P1W2D",
    ] {
        assert!(Period::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn rules_read_and_write_druids_json() {
    let druid = json!([
        {"type": "loadByPeriod", "period": "P1M", "includeFuture": true,
         "tieredReplicants": {"hot": 1, "_default_tier": 1}, "useDefaultTierForNull": true},
        {"type": "loadByInterval", "interval": "2024-01-01T00:00:00.000Z/2024-02-01T00:00:00.000Z",
         "tieredReplicants": {"cold": 0}, "useDefaultTierForNull": false},
        {"type": "dropBeforeByPeriod", "period": "P1Y"},
        {"type": "dropByPeriod", "period": "P1D", "includeFuture": false},
        {"type": "dropByInterval", "interval": "2020-01-01T00:00:00.000Z/2021-01-01T00:00:00.000Z"},
        {"type": "broadcastByPeriod", "period": "PT6H", "includeFuture": true},
        {"type": "broadcastByInterval", "interval": "2020-01-01T00:00:00.000Z/2021-01-01T00:00:00.000Z"},
        {"type": "broadcastForever"},
        {"type": "dropForever"},
    ]);
    let rules = parse_rules(&druid).unwrap();
    assert_eq!(serde_json::to_value(&rules).unwrap(), druid);
    assert_eq!(
        rules[0].action(),
        Action::Load(BTreeMap::from([("_default_tier".into(), 1), ("hot".into(), 1)]))
    );
    // Defaults: includeFuture and useDefaultTierForNull are true; no tiers means two replicas
    // on the default tier, or none when useDefaultTierForNull is false.
    let rules = parse_rules(&json!([
        {"type": "loadByPeriod", "period": "P1D"},
        {"type": "loadForever", "useDefaultTierForNull": false},
    ]))
    .unwrap();
    assert_eq!(
        rules[0],
        Rule::LoadByPeriod {
            period: "P1D".into(),
            include_future: true,
            tiered_replicants: None,
            use_default_tier_for_null: true
        }
    );
    assert_eq!(
        rules[0].action(),
        Action::Load(BTreeMap::from([(DEFAULT_TIER.into(), DEFAULT_REPLICANTS)]))
    );
    assert_eq!(rules[1].action(), Action::Load(BTreeMap::new()));
}

#[test]
fn bad_rules_are_refused_naming_the_field() {
    let field = |v: Value| parse_rules(&v).unwrap_err();
    let e = field(json!([{"type": "loadForever"}, {"type": "keepForever"}]));
    assert_eq!(e.field, "[1]");
    assert!(e.message.contains("unknown rule type [keepForever]"), "{e}");
    let e = field(json!([{"type": "loadByPeriod", "period": "one month"}]));
    assert_eq!(e.field, "[0].period");
    let e = field(json!([{"type": "dropByInterval", "interval": "2024-01-01/P1D"}]));
    assert_eq!(e.field, "[0].interval");
    let e = field(json!([{"type": "dropByInterval", "interval": "yesterday"}]));
    assert_eq!(e.field, "[0].interval");
    let e = field(json!([{"type": "loadForever", "tieredReplicants": {"hot": -1}}]));
    assert_eq!(e.field, "[0].tieredReplicants.hot");
    let e = field(json!([{"type": "loadByPeriod"}]));
    assert!(e.message.contains("period"), "{e}");
    let e = field(json!([{"period": "P1D"}]));
    assert!(e.message.contains("needs a \"type\""), "{e}");
    // Fields a rule does not have are ignored, as Druid does.
    let rules = parse_rules(&json!([{"type": "broadcastForever", "colocatedDataSources": ["a"]}])).unwrap();
    assert_eq!(rules, [Rule::BroadcastForever {}]);
    let e = field(json!({"type": "dropForever"}));
    assert_eq!(e.field, "rules");
    // A tier Druid does not know yet is allowed.
    assert!(parse_rules(&json!([{"type": "loadForever", "tieredReplicants": {"nowhere": 3}}])).is_ok());
}

/// A rule over whole hours, with how a brute-force evaluator reads it: the set of hours it
/// covers, checked hour by hour against the segment's hours.
#[derive(Debug, Clone)]
enum Spec {
    Forever(bool),
    LoadInterval(i64, i64),
    DropInterval(i64, i64),
    LoadPeriod(i64, bool),
    DropPeriod(i64, bool),
    DropBefore(i64),
}

impl Spec {
    fn rule(&self) -> Rule {
        let iso = |h: i64| raftlord_time::interval::iso(BASE + h * HOUR);
        let interval = |a: i64, b: i64| format!("{}/{}", iso(a), iso(b));
        let period = |h: i64| {
            if h % 24 == 0 {
                format!("P{}D", h / 24)
            } else {
                format!("PT{h}H")
            }
        };
        match *self {
            Spec::Forever(true) => Rule::LoadForever {
                tiered_replicants: None,
                use_default_tier_for_null: true,
            },
            Spec::Forever(false) => Rule::DropForever {},
            Spec::LoadInterval(a, b) => Rule::LoadByInterval {
                interval: interval(a, b),
                tiered_replicants: None,
                use_default_tier_for_null: true,
            },
            Spec::DropInterval(a, b) => Rule::DropByInterval {
                interval: interval(a, b),
            },
            Spec::LoadPeriod(h, f) => Rule::LoadByPeriod {
                period: period(h),
                include_future: f,
                tiered_replicants: None,
                use_default_tier_for_null: true,
            },
            Spec::DropPeriod(h, f) => Rule::DropByPeriod {
                period: period(h),
                include_future: f,
            },
            Spec::DropBefore(h) => Rule::DropBeforeByPeriod { period: period(h) },
        }
    }

    /// Whether the rule applies to the segment of hours `seg` at hour `now`, read as sets of
    /// hours: a load rule when some hour of the segment is in its window, a drop rule when
    /// every hour is.
    fn brute(&self, seg: (i64, i64), now: i64) -> bool {
        let hours = seg.0..seg.1;
        let mut any = hours.clone();
        let mut all = hours;
        match *self {
            Spec::Forever(_) => true,
            Spec::LoadInterval(a, b) => any.any(|h| a <= h && h < b),
            Spec::DropInterval(a, b) => all.all(|h| a <= h && h < b),
            Spec::LoadPeriod(p, future) => any.any(|h| now - p <= h && (future || h < now)),
            Spec::DropPeriod(p, future) => all.all(|h| now - p <= h && (future || h < now)),
            Spec::DropBefore(p) => all.all(|h| h < now - p),
        }
    }

    fn loads(&self) -> bool {
        matches!(
            self,
            Spec::Forever(true) | Spec::LoadInterval(..) | Spec::LoadPeriod(..)
        )
    }
}

fn spec() -> impl Strategy<Value = Spec> {
    let span = (0i64..200, 1i64..100);
    prop_oneof![
        any::<bool>().prop_map(Spec::Forever),
        span.clone().prop_map(|(a, n)| Spec::LoadInterval(a, a + n)),
        span.prop_map(|(a, n)| Spec::DropInterval(a, a + n)),
        (1i64..150, any::<bool>()).prop_map(|(p, f)| Spec::LoadPeriod(p, f)),
        (1i64..150, any::<bool>()).prop_map(|(p, f)| Spec::DropPeriod(p, f)),
        (1i64..150).prop_map(Spec::DropBefore),
    ]
}

proptest! {
    /// Every segment gets the fate of the first rule (datasource rules, then defaults) that
    /// the brute-force evaluator finds applying, or none.
    #[test]
    fn first_match_agrees_with_a_brute_force_evaluator(
        own in proptest::collection::vec(spec(), 0..4),
        defaults in proptest::collection::vec(spec(), 0..3),
        segments in proptest::collection::vec((0i64..250, 1i64..48), 1..30),
        now in 0i64..300,
    ) {
        let rules: Vec<Rule> = own.iter().map(Spec::rule).collect();
        let default_rules: Vec<Rule> = defaults.iter().map(Spec::rule).collect();
        // What the rules say for the JSON round trip too: what is stored is what is evaluated.
        let stored = parse_rules(&serde_json::to_value(&rules).unwrap()).unwrap();
        prop_assert_eq!(&stored, &rules);
        for (start, len) in segments {
            let seg = Interval::new(BASE + start * HOUR, BASE + (start + len) * HOUR).unwrap();
            let expected = own.iter().chain(&defaults).find(|s| s.brute((start, start + len), now));
            let got = first_match(&rules, &default_rules, &seg, BASE + now * HOUR);
            prop_assert_eq!(got.map(Rule::action), expected.map(|s| s.rule().action()));
            prop_assert_eq!(got.is_some_and(|r| r.action() != Action::Drop), expected.is_some_and(Spec::loads));
        }
    }
}
