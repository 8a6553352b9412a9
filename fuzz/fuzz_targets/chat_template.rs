//! Chat templates: the first byte picks (even) ChatML with messages decoded from
//! the rest, or (odd) the rest compiled as a template (a GGUF carries its own)
//! and rendered with a fixed conversation. Errors are fine; panics are bugs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_node::model::chat::{ChatTemplate, CHATML};
use tessera_types::{ChatMessage, Role};

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else { return };
    let text = String::from_utf8_lossy(rest);
    if mode % 2 == 0 {
        let Ok(t) = ChatTemplate::new(CHATML, "<s>", "</s>") else { return };
        let roles = [Role::System, Role::User, Role::Assistant];
        let messages: Vec<ChatMessage> = text
            .split('\u{1}')
            .enumerate()
            .map(|(i, part)| ChatMessage { role: roles[i % 3], content: part.to_string() })
            .collect();
        let _ = t.render(&messages);
    } else if let Ok(t) = ChatTemplate::new(&text, "<s>", "</s>") {
        let _ = t.render(&[ChatMessage { role: Role::User, content: "hello 你好".into() }]);
    }
});
