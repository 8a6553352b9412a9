//! Chat templates: the model's own Jinja template (`tokenizer.chat_template`)
//! rendered with minijinja the way Hugging Face renders it (trim_blocks,
//! lstrip_blocks, Python string methods, `raise_exception`).
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{context, Environment, Error, ErrorKind};
pub use tessera_types::ChatMessage;

use super::ModelError;

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

/// ChatML, for models whose GGUF carries no template.
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

impl ChatTemplate {
    /// Compiles `source`; `bos`/`eos` are the model's special token strings.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, ModelError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ModelError::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ModelError::Template(format!("chat template does not compile: {e}")))?;
        Ok(Self { env, bos: bos.to_string(), eos: eos.to_string() })
    }

    /// The prompt text for `messages`, ending with the assistant's turn opener.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, ModelError> {
        let template = self.env.get_template("chat").map_err(|e| ModelError::Template(e.to_string()))?;
        template
            .render(context! {
                messages => Serde(messages),
                add_generation_prompt => true,
                bos_token => self.bos.as_str(),
                eos_token => self.eos.as_str(),
            })
            .map_err(|e| ModelError::Template(format!("rendering the chat template: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_types::Role;

    #[test]
    fn renders_chatml_with_a_default_system_prompt() {
        let src = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nDefault<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        let t = ChatTemplate::new(src, "<|im_start|>", "<|im_end|>").unwrap();
        let out = t.render(&[ChatMessage { role: Role::User, content: "你好".into() }]).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nDefault<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let t = ChatTemplate::new("{{ messages[0]['content'].strip() }}{% if messages|length > 1 %}{{ raise_exception('one only') }}{% endif %}", "", "").unwrap();
        assert_eq!(t.render(&[ChatMessage { role: Role::User, content: "  hi  ".into() }]).unwrap(), "hi");
        let two = vec![ChatMessage { role: Role::User, content: "a".into() }; 2];
        assert!(t.render(&two).unwrap_err().to_string().contains("one only"));
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
