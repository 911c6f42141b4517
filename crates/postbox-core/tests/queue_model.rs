//! The port queue against a simple model: a list scanned for the best match by the stated
//! rules (lowest accepted type for `AtMost`, then highest priority, then earliest arrival).

use postbox_core::{PortQueue, ProcessId, QueuedMeta, Selector, TypeFilter};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Push { sender: u32, msg_type: u32, priority: u8 },
    Pop(Selector),
}

fn selector() -> impl Strategy<Value = Selector> {
    let sender = prop_oneof![Just(None), (0u32..3).prop_map(|s| Some(ProcessId::new(s, 1)))];
    let msg_type = prop_oneof![
        Just(TypeFilter::Any),
        (0u32..5).prop_map(TypeFilter::Exact),
        (0u32..5).prop_map(TypeFilter::AtMost),
    ];
    (sender, msg_type).prop_map(|(sender, msg_type)| Selector { sender, msg_type })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u32..3, 0u32..5, 0u8..32)
            .prop_map(|(sender, msg_type, priority)| Op::Push { sender, msg_type, priority }),
        2 => selector().prop_map(Op::Pop),
    ]
}

/// The model: every queued message with its arrival number.
fn model_pop(model: &mut Vec<(u64, QueuedMeta)>, selector: Selector) -> Option<u64> {
    let accepted: Vec<usize> =
        (0..model.len()).filter(|&i| selector.accepts(&model[i].1)).collect();
    let lowest_type = accepted.iter().map(|&i| model[i].1.msg_type).min();
    let best = accepted
        .into_iter()
        .filter(|&i| match selector.msg_type {
            TypeFilter::AtMost(_) => Some(model[i].1.msg_type) == lowest_type,
            _ => true,
        })
        .max_by_key(|&i| (model[i].1.priority, std::cmp::Reverse(model[i].0)))?;
    Some(model.remove(best).0)
}

proptest! {
    #[test]
    fn the_port_queue_delivers_in_the_order_of_the_model(ops in proptest::collection::vec(op(), 1..200)) {
        let mut queue = PortQueue::new();
        let mut model = Vec::new();
        let mut arrivals = 0u64;
        for op in ops {
            match op {
                Op::Push { sender, msg_type, priority } => {
                    let meta = QueuedMeta { sender: ProcessId::new(sender, 1), msg_type, priority };
                    queue.push(meta, arrivals);
                    model.push((arrivals, meta));
                    arrivals += 1;
                }
                Op::Pop(selector) => {
                    let got = queue.pop(selector).map(|(_, arrival)| arrival);
                    prop_assert_eq!(got, model_pop(&mut model, selector), "selector {:?}", selector);
                }
            }
            prop_assert_eq!(queue.len(), model.len());
        }
    }
}
