//! The chat template from the model's own metadata (Jinja, as Hugging Face writes it),
//! rendered with minijinja; ChatML when the model carries none.

use minijinja::{context, Environment, Error, ErrorKind};

use super::ChatMessage;

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

const CHATML: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

impl ChatTemplate {
    pub fn new(source: Option<String>, bos: String, eos: String) -> anyhow::Result<ChatTemplate> {
        let mut env = Environment::new();
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.unwrap_or_else(|| CHATML.to_string()))?;
        Ok(ChatTemplate { env, bos, eos })
    }

    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, String> {
        let msgs: Vec<_> = messages
            .iter()
            .map(|m| context! { role => m.role.clone(), content => m.content.clone() })
            .collect();
        let tmpl = self.env.get_template("chat").map_err(|e| e.to_string())?;
        tmpl.render(context! {
            messages => msgs,
            add_generation_prompt => true,
            bos_token => self.bos.clone(),
            eos_token => self.eos.clone(),
        })
        .map_err(|e| format!("the chat template failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_fallback() {
        let t = ChatTemplate::new(None, String::new(), String::new()).expect("template");
        let out = t
            .render(&[ChatMessage {
                role: "user".into(),
                content: "hi".into(),
            }])
            .expect("render");
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
