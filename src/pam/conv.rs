//! The PAM conversation as a `flow::Conversation`.

use crate::flow::{ConvError, Conversation};
use crate::secret::Secret;
use ::pam::constants::{PAM_ERROR_MSG, PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON, PAM_TEXT_INFO};
use ::pam::conv::Conv;
use ::pam::module::PamHandle;
use zeroize::Zeroizing;

pub struct PamConv<'a> {
    conv: Conv<'a>,
    /// `PAM_SILENT`: the application asked for no messages (prompts still go out).
    silent: bool,
    /// The last answer as the application gave it, and the length of its text form: a
    /// password is handed on byte for byte, even when it is not UTF-8.
    last: Option<(Zeroizing<Vec<u8>>, usize)>,
    /// The password part of a verified one-prompt answer, for PAM_AUTHTOK.
    password: Option<Zeroizing<Vec<u8>>>,
}

impl<'a> PamConv<'a> {
    pub fn from_handle(pamh: &'a PamHandle, silent: bool) -> Option<Self> {
        let conv = pamh.get_item::<Conv>().ok()??;
        Some(PamConv {
            conv,
            silent,
            last: None,
            password: None,
        })
    }

    pub fn take_password(&mut self) -> Option<Zeroizing<Vec<u8>>> {
        self.password.take()
    }
}

impl PamConv<'_> {
    fn prompt(
        &mut self,
        style: ::pam::constants::PamMessageStyle,
        text: &str,
    ) -> Result<Secret, ConvError> {
        match self.conv.send(style, text) {
            // Invalid UTF-8 becomes U+FFFD, which no code contains: a wrong try, never sent.
            Ok(Some(answer)) => {
                let raw = Zeroizing::new(answer.as_bytes().to_vec());
                let text = Secret::new(String::from_utf8_lossy(&raw));
                self.last = Some((raw, text.expose().len()));
                Ok(text)
            }
            Ok(None) => {
                self.last = None;
                Ok(Secret::new(""))
            }
            Err(code) => Err(ConvError(format!("the conversation failed ({code:?})"))),
        }
    }
}

impl Conversation for PamConv<'_> {
    fn prompt_secret(&mut self, text: &str) -> Result<Secret, ConvError> {
        self.prompt(PAM_PROMPT_ECHO_OFF, text)
    }

    /// The phone number of an enrolment: shown as it is typed.
    fn prompt_echo(&mut self, text: &str) -> Result<Secret, ConvError> {
        self.prompt(PAM_PROMPT_ECHO_ON, text)
    }

    fn info(&mut self, text: &str) {
        if !self.silent {
            let _ = self.conv.send(PAM_TEXT_INFO, text);
        }
    }

    fn error(&mut self, text: &str) {
        if !self.silent {
            let _ = self.conv.send(PAM_ERROR_MSG, text);
        }
    }

    /// The flow cut an ASCII code off the end of the text form, so as many bytes come off the
    /// raw answer: the password keeps the bytes the person typed.
    fn keep_password(&mut self, password: Secret) {
        let raw = self.last.take().and_then(|(raw, text_len)| {
            let code_len = text_len.checked_sub(password.expose().len())?;
            let keep = raw.len().checked_sub(code_len)?;
            raw.get(..keep).map(|p| Zeroizing::new(p.to_vec()))
        });
        self.password =
            Some(raw.unwrap_or_else(|| Zeroizing::new(password.expose().as_bytes().to_vec())));
    }
}
