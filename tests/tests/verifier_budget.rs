//! The verifier's budget for both program variants: the stack along any call chain and the
//! instructions the verifier processes, with headroom below the kernel's limits, so that
//! growth shows here before a load fails on some kernel.

#[cfg(target_arch = "x86_64")]
#[path = "../src/verifier_stats.rs"]
mod verifier_stats;

/// The verifier's hard limit is 512 bytes along one call chain (frames rounded as it rounds
/// them). The target (issue 18) is 448, room for one more helper's frame, and the program
/// meets it: `judge` reads the scratch record in place rather than copying it (496 -> 480
/// bytes) and the ClientHello's fixed fields are read in two small loads rather than one of
/// 44 bytes (the chain entry -> `stream_head` -> `sni_stage` -> `walk_stage`, 480 -> 448).
const MAX_STACK_CHAIN: u32 = 448;

/// Ceiling on the verifier's "processed N insns" for each program variant. It was set at
/// about 1.5x the largest measured (`vpn_filter`, 423,343 on 2026-12-06, before the consumer
/// VPN rules, the fully-encrypted rule and the fallback closure); those took it to 684,316
/// (871,746 before the classifier's inputs were laundered, see `detect`). The ClientHello
/// stage (`tls_sni`, sni.rs) took it to 821,691: its extension walk (32 steps) and name
/// hash (128 steps) are verified once per state `stream_head` reaches its two call sites
/// in. The fully-encrypted rule's look at datagrams the signatures' prefilters took but no
/// signature matched, and the follow-ups' check that a flow claims them (detect.rs,
/// `conversation_look`, `flow_claims`), took it to 842,302; walking a ClientHello from a
/// stream head its first segment did not fill (sni.rs `from_head`, a second call site of the
/// continuation) to 864,367; the 4-way event-limit bucket and the ClientHello carry (a
/// boundary inside the server name, sni.rs `fill_stream`/`save_carry`) to 883,828; 883,286
/// with the overlap and repeat handling. The
/// ceiling is about 1.02x that, 10% below the kernel's
/// 1,000,000: growth shows here first, and the next feature needs room made first.
/// The kernel refuses a program at 1,000,000, and verification time and memory grow well
/// before that. To raise it after the program grew on purpose: run this test with
/// `--nocapture`, read the figures it prints, set this to about 1.5x the larger one, and
/// say in the commit what grew and why.
const MAX_PROCESSED_INSNS: u32 = 900_000;

#[cfg(target_arch = "x86_64")]
#[test]
fn both_programs_stay_within_the_verifier_budget() {
    vpn_filter_tests::require_root();
    let stats = verifier_stats::measure().expect("both programs load through the verifier");
    for s in &stats {
        eprintln!(
            "{}: {} xlated insns, {} processed insns (verified in {:?} us), stack depth {} (deepest chain {} bytes: subprograms {:?}; their lengths {:?} insns)",
            s.program,
            s.xlated_insns,
            s.processed_insns,
            s.verification_us,
            s.stack_depths
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("+"),
            s.deepest_chain,
            s.chain,
            s.lengths
        );
    }
    for s in &stats {
        assert!(
            s.deepest_chain <= MAX_STACK_CHAIN,
            "{}: the stack along subprograms {:?} reaches {} bytes, over the budget of \
             {MAX_STACK_CHAIN} (frames {:?}; the verifier refuses 512)",
            s.program,
            s.chain,
            s.deepest_chain,
            s.stack_depths
        );
        assert!(
            s.processed_insns <= MAX_PROCESSED_INSNS,
            "{}: the verifier processed {} instructions, over the ceiling of \
             {MAX_PROCESSED_INSNS} (raise it only knowingly: see the constant's comment)",
            s.program,
            s.processed_insns
        );
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn the_statistics_lines_of_a_verifier_log_parse() {
    let log = "func#0 @0\nverification time 1234 usec\nstack depth 120+24+0\n\
               processed 4567 insns (limit 1000000) max_states_per_insn 4 total_states 300 \
               peak_states 200 mark_read 50\n";
    assert_eq!(
        verifier_stats::parse_log(log),
        Some((4567, vec![120, 24, 0]))
    );
}

#[cfg(not(target_arch = "x86_64"))]
#[test]
fn the_verifier_budget_is_checked_on_x86_64_only() {
    eprintln!("skipped: the verifier log capture works on x86_64 only (verifier_stats.rs)");
}
